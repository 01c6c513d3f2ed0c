#!/usr/bin/env bash
# Regenerate tests/fixtures/clients: QAT folders of tiny models (one per run_qat task, made by hf_qat in this
# environment) and the report of the deployment clients (optimum-intel's OVModelFor*, optimum-onnx's ORTModelFor*)
# loading them in their own environment, with their inputs and logits, from the folders and (text classification)
# by repo id from a hub. tests/test_deployment_clients.py checks the
# report against hf_qat's own ONNX Runtime session on the same files.
#
# Usage (repository root): bash scripts/clients/regenerate.sh [ENV_ROOT]
set -euo pipefail
ENVS="${1:-${HF_QAT_ENVS:-$HOME/.cache/hf_qat/interop-envs}}"
DEST=tests/fixtures/clients
bash scripts/clients/make_env.sh "$ENVS"
python scripts/clients/make_folders.py "$DEST" --tasks token-classification,image-classification,causal-lm
python scripts/clients/make_folders.py "$DEST" --tasks text-classification --all-files  # a whole push, see below
# exit status 1 is a finding (e.g. causal LMs without a KV cache): the report records it and the tests check it
"$ENVS/clients/bin/python" scripts/clients/referee.py "$DEST"/*/ --json "$DEST/report.json" --save-outputs || true
# the text-classification folder pushed to the project's test hub and loaded by repo id
python scripts/clients/hub_roundtrip.py "$DEST/text-classification" --python "$ENVS/clients/bin/python" \
  --json "$DEST/report_hub.json" --save-outputs
du -sh "$DEST"
