#!/usr/bin/env bash
# Build the environment of the deployment-clients referee (scripts/clients/referee.py): the loaders Hugging Face
# users reach for, optimum-intel (OVModelFor*) and optimum-onnx (ORTModelFor*), in one venv of their own.
#
# Why its own environment: optimum-onnx (every release, 0.0.1 to 0.1.0) caps transformers below 4.58, and hf_qat's
# main environment runs transformers 5. The two clients share one environment only at these versions:
#   optimum-intel 1.27.0 is the last release that depends on optimum-onnx (~=0.1.0) and accepts transformers < 4.58;
#   optimum-intel 2.x requires optimum ~=2.2/2.3, while optimum-onnx 0.1.0 requires optimum ~=2.1.0, so no
#   optimum-intel 2.x installs beside any optimum-onnx release.
# torch is the CPU build 2.13.0 (a local wheel through pip's find-links where there is one, e.g. /opt/wheels;
# otherwise the PyTorch CPU index), installed first so that no later requirement pulls the default index's CUDA
# build. hf_qat is not installed there: the referee reads files only.
#
# clients (Python 3.11.7, x86_64; built in 56-82 s on 2 CPU cores, torch from a local wheel, PyPI for the rest):
#   optimum==2.1.0 optimum-intel==1.27.0 optimum-onnx==0.1.0 transformers==4.57.6 torch==2.13.0+cpu
#   openvino==2026.4.1 openvino-tokenizers==2026.4.1.0 nncf==3.4.0 onnx==1.23.2 onnxruntime==1.32.0
#   numpy==2.4.6 huggingface_hub==0.36.2 tokenizers==0.22.2
#
# With WITH_LATEST_OV=1 it also builds clients-ov-latest: the newest optimum-intel, what `pip install
# optimum-intel[openvino]` gives a user today (no optimum-onnx there; run the referee with --clients ov):
#   optimum==2.3.0 optimum-intel==2.2.0 transformers==5.5.4 torch==2.13.0+cpu openvino==2026.4.1 nncf==3.4.0
#   onnxruntime==1.32.0 huggingface_hub==1.21.0 (54-64 s)
# optimum-intel 2.2 requires torchvision, but PyPI's torchvision (0.28) does not import beside the CPU torch 2.13
# build ("operator torchvision::nms does not exist"), and transformers then fails to import AutoProcessor; the
# script uninstalls torchvision there (it is only used for vision-language exports, not to load an IR).
#
# Usage: [WITH_LATEST_OV=1] bash scripts/clients/make_env.sh [ENV_ROOT]
#        (default ENV_ROOT: $HF_QAT_ENVS or ~/.cache/hf_qat/interop-envs)
# Then:  ENV_ROOT/clients/bin/python scripts/clients/referee.py FOLDER [FOLDER ...] [--task TASK] [--json out.json]
set -euo pipefail
ENVS="${1:-${HF_QAT_ENVS:-$HOME/.cache/hf_qat/interop-envs}}"
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0"
KEY='^(optimum|optimum-intel|optimum-onnx|transformers|torch|torchvision|openvino|openvino-tokenizers|nncf|onnx|onnxruntime|numpy|huggingface[-_]hub|tokenizers)=='
mkdir -p "$ENVS"

build() {  # name, import check, then pip requirements
  local name="$1" check="$2"; shift 2
  local env="$ENVS/$name" start
  if [ -x "$env/bin/python" ] && "$env/bin/python" -c "$check" 2>/dev/null; then
    echo "[$name] exists: $env"
  else
    start=$(date +%s)
    "$PY" -m venv "$env"
    "$env/bin/pip" install -q --upgrade pip
    # A local CPU wheel first, without its dependencies (the next install adds them); else the CPU index.
    if ! "$env/bin/pip" install -q --no-deps --no-index "$TORCH+cpu" 2>/dev/null; then
      "$env/bin/pip" install -q "$TORCH" --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
    fi
    "$env/bin/pip" install -q "$TORCH" "$@"
    if [ "$name" = clients-ov-latest ]; then "$env/bin/pip" uninstall -y -q torchvision; fi
    "$env/bin/python" -c "$check"
    echo "[$name] built in $(( $(date +%s) - start )) s: $env"
  fi
  "$env/bin/pip" freeze 2>/dev/null | grep -iE "$KEY" | tr '\n' ' ' | sed "s/^/[$name] /"; echo
}

build clients "from optimum.intel import OVModelForCausalLM; from optimum.onnxruntime import ORTModelForCausalLM" \
  "optimum-intel[openvino]==1.27.0" "optimum-onnx[onnxruntime]==0.1.0" "optimum==2.1.0" \
  "transformers>=4.57,<4.58" "numpy<3"

if [ "${WITH_LATEST_OV:-0}" = 1 ]; then
  build clients-ov-latest "from optimum.intel import OVModelForCausalLM" \
    "optimum-intel[openvino]==2.2.0" "onnxruntime" "numpy<3"
fi
