"""NNCF's classification sample configs on the torchvision architectures they were written for.

The normal test suite runs these configs on a stand-in CNN (torchvision does not import beside the CPU torch
2.13 build the project pins). This referee runs them on the real architectures, in an environment of its own:

    python -m venv ENV && ENV/bin/pip install torch==2.14.1 torchvision==0.29.1
    ENV/bin/pip install --no-deps -e . && ENV/bin/pip install numpy jsonschema tqdm json5 safetensors onnx onnxscript onnxruntime
    ENV/bin/python scripts/corpus/torchvision_referee.py

For every ``tests/corpus/nncf_torchvision_*.json``: the named torchvision model (random weights: ``pretrained``
needs a download), the config unchanged, calibration on random images of the config's input size, one training
step, then INT8 ONNX export verified in ONNX Runtime. Prints one line per config; exits 1 if any fails.
NNCF's own RMNet (``rmnet_cifar_int8``) is not a torchvision model and is skipped.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torchvision

import hf_qat
from hf_qat.utils.jsonfile import loads_json

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "corpus"


def run(path: Path, out: Path) -> str:
    config = loads_json(path.read_bytes(), source=str(path), strict=True, comments=True)
    name = config["model"]
    if not hasattr(torchvision.models, name):
        return f"SKIP {path.name}: {name} is not a torchvision model"
    kwargs = {"num_classes": config.get("num_classes", 1000), "weights": None}
    if name == "inception_v3":
        # torchvision's pretrained Inception3 normalises its input in forward (transform_input); the config's
        # scopes (Inception3/__add___0 ...) name those operations
        kwargs.update(init_weights=False, transform_input=bool(config.get("pretrained")))
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(**kwargs)
    info = config["input_info"]
    size = (info[0] if isinstance(info, list) else info)["sample_size"]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, *size[1:], generator=g) for _ in range(2)]
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nncf_config = hf_qat.register_default_init_args(hf_qat.NNCFConfig.from_dict(config), batches)
        ctrl, model = hf_qat.create_compressed_model(model, nncf_config)
    model.train()
    out_t = model(batches[0])
    logits = out_t[0] if isinstance(out_t, tuple) else getattr(out_t, "logits", out_t)
    logits.float().pow(2).mean().backward()
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    model.eval()
    result = ctrl.export_model(str(out / f"{path.stem}.onnx"), model_args=batches[0][:1])
    ok = all(r.ok for r in result.verification)
    return (
        f"{'RUNS' if ok else 'MISMATCH'} {path.name}: {name}, {len(ctrl.weight_quantizers)} weight and "
        f"{len(ctrl.activation_quantizers)} activation quantizers, INT8 ONNX verified in ONNX Runtime: {ok} "
        f"({time.perf_counter() - started:.0f} s)"
    )


def main() -> int:
    failures = 0
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, hf_qat {hf_qat.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(CORPUS.glob("nncf_torchvision_*.json")):
            try:
                line = run(path, Path(tmp))
            except Exception:
                line = f"FAIL {path.name}:\n{traceback.format_exc()}"
            failures += not line.startswith(("RUNS", "SKIP"))
            print(line, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
