#!/usr/bin/env bash
# Build the two reference environments that check hf_qat against real NNCF:
#   legacy: NNCF 2.19.0 (last release with create_compressed_model / load_state) on torch 2.9.1
#           (NNCF 2.19 pins torch 2.9.*; on x86_64 the only build is the default index's CUDA build,
#           a large download that runs on the CPU) and transformers 5.24.0.
#   nncf3:  NNCF 3.4.0 on torch 2.13.0 (CPU) and transformers 5.24.0.
# The referee scripts import only torch, transformers, safetensors and NNCF there (hf_qat runs in its own
# environment: the Python that runs regenerate.sh).
#
# Usage: bash scripts/nncf_interop/make_envs.sh [ENV_ROOT]   (default: $HF_QAT_INTEROP_ENVS or
#        ~/.cache/hf_qat/interop-envs). Then: bash scripts/nncf_interop/regenerate.sh
set -euo pipefail
ENVS="${1:-${HF_QAT_INTEROP_ENVS:-$HOME/.cache/hf_qat/interop-envs}}"
PY="${PYTHON:-python3}"
mkdir -p "$ENVS"

build() {  # name, then pip requirement lines
  local name="$1"; shift
  if [ -x "$ENVS/$name/bin/python" ] && "$ENVS/$name/bin/python" -c "import nncf" 2>/dev/null; then
    echo "[$name] exists: $ENVS/$name"; return
  fi
  "$PY" -m venv "$ENVS/$name"
  "$ENVS/$name/bin/pip" install -q --upgrade pip
  "$ENVS/$name/bin/pip" install -q "$@"
  echo "[$name] built: $ENVS/$name"
}

# torch first (a later range must not pull another build), then the rest.
build nncf3 "torch==2.13.0" && "$ENVS/nncf3/bin/pip" install -q "nncf==3.4.0" "transformers==5.24.0" "safetensors>=0.4" "jsonschema>=4" "numpy<3"
# NNCF 2.19 pins torch 2.9.*; pip's machine-wide cap (if any) does not matter for 2.9.1.
build legacy "torch==2.9.1" && "$ENVS/legacy/bin/pip" install -q "nncf==2.19.0" "transformers==5.24.0" "safetensors>=0.4" "jsonschema>=4" "numpy<3" "ninja"

# NNCF 2.19 compiles its C++ extension on first import (about a minute); do it now, with a long timeout.
rm -rf "$HOME"/.cache/torch_extensions/*/quantized_functions_cpu/lock 2>/dev/null || true
NNCF_TORCH_LEGACY_TRACING=1 NNCF_EXTENSION_LOAD_TIMEOUT=600 "$ENVS/legacy/bin/python" -c \
  "import nncf, torch; from nncf.torch import create_compressed_model; print('legacy:', nncf.__version__, torch.__version__)"
"$ENVS/nncf3/bin/python" -c "import nncf, torch; print('nncf3:', nncf.__version__, torch.__version__)"
