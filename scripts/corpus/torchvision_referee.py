"""NNCF's classification sample configs on the torchvision architectures they were written for.

The normal test suite runs these configs on a stand-in CNN (torchvision does not import beside the CPU torch
2.13 build the project pins). This referee runs them on the real architectures, in an environment of its own:

    python -m venv ENV && ENV/bin/pip install torch==2.14.1 torchvision==0.29.1
    ENV/bin/pip install --no-deps -e . && ENV/bin/pip install numpy jsonschema tqdm json5 safetensors onnx onnxscript onnxruntime
    ENV/bin/python scripts/corpus/torchvision_referee.py [--write-structure]

It does three things and exits 1 if any fails:

1. For every ``tests/corpus/nncf_torchvision_*.json``: the named torchvision model (random weights: ``pretrained``
   needs a download; BatchNorm statistics settled on random images as a trained network has them), the config
   unchanged, calibration on random images of the config's input size, one training step, then INT8 ONNX export
   verified in ONNX Runtime. NNCF's own RMNet (``rmnet_cifar_int8``) is not a torchvision model and is skipped.
2. Checks that the stand-ins of ``tests/torchvision_models.py`` (which the normal suite runs the configs on) are
   the torchvision architectures: torchvision's weights load into them strictly and give identical outputs, in
   training and in eval mode.
3. With ``--write-structure``: writes ``tests/fixtures/torchvision_structure.json`` (each model's modules with
   their classes, its parameter and buffer shapes, and the operations hf_qat traces in it), which the normal suite
   compares the stand-ins with.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
import torchvision

import hf_qat
from hf_qat.torch.tracing import trace_model
from hf_qat.utils.jsonfile import loads_json

TESTS = Path(__file__).resolve().parents[2] / "tests"
CORPUS = TESTS / "corpus"
STRUCTURE = TESTS / "fixtures" / "torchvision_structure.json"
sys.path.insert(0, str(TESTS))
import torchvision_models  # noqa: E402  (tests/torchvision_models.py)


def _torchvision(name: str, num_classes: int = 1000, transform_input: bool = False) -> torch.nn.Module:
    kwargs = {"num_classes": num_classes, "weights": None}
    if name == "inception_v3":
        kwargs.update(init_weights=False, transform_input=transform_input)
    return getattr(torchvision.models, name)(**kwargs)


def structure(model: torch.nn.Module, size: list[int]) -> dict:
    """What NNCF scopes and checkpoints depend on: the module tree, the tensors and the traced operations."""
    example = torch.zeros(size)
    trace = trace_model(model, lambda m: m(example))
    return {
        "modules": [[path, type(m).__name__] for path, m in model.named_modules()],
        "tensors": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        "operations": trace.node_names,
    }


def check_stand_in(name: str, size: list[int]) -> str:
    """torchvision's weights in the stand-in: strict load, identical outputs in training and eval mode."""
    kwargs = {"transform_input": True} if name == "inception_v3" else {}
    torch.manual_seed(0)
    real = _torchvision(name, **kwargs)
    stand_in = torchvision_models.MODELS[name](**kwargs)
    stand_in.load_state_dict(real.state_dict(), strict=True)
    x = torch.randn(2, *size[1:], generator=torch.Generator().manual_seed(0))
    worst = 0.0
    for train in (True, False):
        real.train(train), stand_in.train(train)
        torch.manual_seed(1)
        a = real(x)
        torch.manual_seed(1)
        b = stand_in(x)
        a, b = (tuple(a), tuple(b)) if isinstance(a, tuple) else ((a,), (b,))
        worst = max([worst] + [(u - v).abs().max().item() for u, v in zip(a, b)])
    if worst != 0.0:
        raise AssertionError(f"{name}: stand-in outputs differ from torchvision's by {worst}")
    return f"SAME {name}: tests/torchvision_models.py loads torchvision's weights strictly, outputs identical"


def run(path: Path, out: Path) -> str:
    config = loads_json(path.read_bytes(), source=str(path), strict=True, comments=True)
    name = config["model"]
    if not hasattr(torchvision.models, name):
        return f"SKIP {path.name}: {name} is not a torchvision model"
    torch.manual_seed(0)
    # torchvision's pretrained Inception3 normalises its input in forward (transform_input); the config's scopes
    # (Inception3/__add___0 ...) name those operations
    model = _torchvision(name, config.get("num_classes", 1000), transform_input=bool(config.get("pretrained")))
    info = config["input_info"]
    size = (info[0] if isinstance(info, list) else info)["sample_size"]
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, *size[1:], generator=g) for _ in range(2)]
    torchvision_models.settle_batch_norm(model, [torch.randn(4, *size[1:], generator=g) for _ in range(2)])
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


#: input size per model, as the corpus configs give it
SIZES = {"inception_v3": [1, 3, 299, 299]}


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
    recorded = {}
    for name in torchvision_models.MODELS:
        size = SIZES.get(name, [1, 3, 224, 224])
        try:
            line = check_stand_in(name, size)
        except Exception:
            line = f"DIFFERENT {name}:\n{traceback.format_exc()}"
        failures += not line.startswith("SAME")
        print(line, flush=True)
        kwargs = {"transform_input": True} if name == "inception_v3" else {}
        recorded[name] = {"input_size": size, **structure(_torchvision(name, **kwargs), size)}
    if "--write-structure" in sys.argv:
        meta = {"torch": torch.__version__, "torchvision": torchvision.__version__}
        text = json.dumps({"made_with": meta, "models": recorded}, indent=0, sort_keys=True) + "\n"
        tmp_path = STRUCTURE.with_suffix(".tmp")
        tmp_path.write_text(text)
        tmp_path.replace(STRUCTURE)
        print(f"wrote {STRUCTURE} ({len(text)} bytes)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
