#!/usr/bin/env bash
# Regenerate the NNCF interop fixtures (tests/fixtures/nncf_interop) with real NNCF 2.19 and 3.4.
#
#   bash scripts/nncf_interop/make_envs.sh       # once: builds the two NNCF environments
#   bash scripts/nncf_interop/regenerate.sh      # writes the fixtures, then checks every direction
#
# Runs, in order: hf_qat writes its checkpoints in both NNCF layouts (this Python); NNCF 2.19 and NNCF 3.4
# each make their own checkpoint of every tiny model and restore hf_qat's with their own API; hf_qat restores
# NNCF's and compares logits (fails above 1e-5). Only NNCF's outputs, NNCF's logits and hf_qat's manifests
# (keys, shapes, states; no tensors) are committed: tests/torch/test_nncf_interop.py rebuilds hf_qat's side.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ENVS="${HF_QAT_INTEROP_ENVS:-$HOME/.cache/hf_qat/interop-envs}"
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
OUT="$ROOT/tests/fixtures/nncf_interop"

"$PY" "$HERE/hfqat_write.py" "$WORK"
# the referees report failures per architecture (GPT-2 under NNCF 2.19 is expected to fail: see the README)
NNCF_TORCH_LEGACY_TRACING=1 NNCF_EXTENSION_LOAD_TIMEOUT=600 "$ENVS/legacy/bin/python" "$HERE/nncf2_referee.py" "$WORK" || true
"$ENVS/nncf3/bin/python" "$HERE/nncf3_referee.py" "$WORK" || true
"$PY" "$HERE/hfqat_read.py" "$WORK"

mkdir -p "$OUT"
rm -f "$OUT"/*
for arch in bert distilbert; do
  cp "$WORK/nncf2_${arch}.pth" "$WORK/nncf2_${arch}_logits.safetensors" "$OUT/"
  cp "$WORK/nncf2_reads_hfqat_${arch}_logits.safetensors" "$OUT/"
done
for arch in bert distilbert gpt2; do
  cp "$WORK/nncf3_${arch}_config.json" "$WORK/nncf3_${arch}_state.safetensors" "$WORK/nncf3_${arch}_logits.safetensors" "$OUT/"
  cp "$WORK/nncf3_reads_hfqat_${arch}_logits.safetensors" "$WORK/hfqat_${arch}_manifest.json" "$OUT/"
done
{
  echo "Made by scripts/nncf_interop/regenerate.sh on $(date -u +%Y-%m-%d)"
  echo "NNCF 2.19: $("$ENVS/legacy/bin/python" -c 'import nncf, torch, transformers; print(nncf.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null | tail -1)"
  echo "NNCF 3.4:  $("$ENVS/nncf3/bin/python" -c 'import nncf, torch, transformers; print(nncf.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null | tail -1)"
  echo "hf_qat:    $("$PY" -c 'import hf_qat, torch, transformers; print(hf_qat.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null | tail -1)"
} > "$OUT/VERSIONS.txt"
du -ch "$OUT"/* | tail -1
