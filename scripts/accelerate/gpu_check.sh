#!/usr/bin/env bash
# FSDP2 over NCCL on GPUs: tests/transformers/test_fsdp.py with scripts/accelerate/fsdp.yaml instead of the CPU
# config (FSDP against DDP for a tiny BERT and a tiny GPT-2, the gathered checkpoint, resume, gradient
# checkpointing). Needs 2 GPUs or more: NCCL cannot put two processes on one GPU. Run from any folder:
#   bash scripts/accelerate/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 2 ]; then
    echo "gpu_check: FSDP over NCCL needs 2 GPUs, this machine has $gpus" >&2
    exit 2
fi
HF_QAT_FSDP_CONFIG=scripts/accelerate/fsdp.yaml python -m pytest -q -p no:cacheprovider tests/transformers/test_fsdp.py \
    -k "steps_equal or loads_in_one_process or resumes or gradient_checkpointing"
