#!/usr/bin/env bash
# Regenerate tests/fixtures/clients: QAT folders of tiny models (one per run_qat task, made by hf_qat in this
# environment) and the report of the deployment clients (optimum-intel's OVModelFor*, optimum-onnx's ORTModelFor*)
# loading them in their own environment, with their inputs and logits. tests/test_deployment_clients.py checks the
# report against hf_qat's own ONNX Runtime session on the same files.
#
# Usage (repository root): bash scripts/clients/regenerate.sh [ENV_ROOT]
set -euo pipefail
ENVS="${1:-${HF_QAT_ENVS:-$HOME/.cache/hf_qat/interop-envs}}"
DEST=tests/fixtures/clients
bash scripts/clients/make_env.sh "$ENVS"
python scripts/clients/make_folders.py "$DEST"
# exit status 1 is a finding (e.g. causal LMs without a KV cache): the report records it and the tests check it
"$ENVS/clients/bin/python" scripts/clients/referee.py "$DEST"/*/ --json "$DEST/report.json" --save-outputs || true
du -sh "$DEST"
