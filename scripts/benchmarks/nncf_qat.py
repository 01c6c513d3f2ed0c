"""Section 3 worker for NNCF (runs in NNCF's virtual environment): PTQ and QAT of the fine-tuned model.

Reads the FP32 model folder and the token batches the main process saved (calibration and QAT
batches, so both libraries see exactly the same data), then:

1. ``nncf.quantize(model_type=TRANSFORMER, subset_size=N)`` on the calibration batches (NNCF PTQ),
   exported to ONNX with NNCF's ``QuantizeLinear``/``DequantizeLinear`` export mode;
2. trains that model for the same steps, batches and learning rate as hf_qat (NNCF QAT), exported
   the same way.

The main process evaluates both files in ONNX Runtime, as deployed::

    python -m scripts.benchmarks.nncf_qat --model_dir DIR --batches FILE --lr 1e-5 --out_dir DIR --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .common import build_model, train_step
from .onnx_io import export_torchscript


def export_nncf(model: torch.nn.Module, example: dict, path: Path) -> Path:
    """NNCF's legacy ONNX export: every quantizer as a ``QuantizeLinear``/``DequantizeLinear`` pair."""
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode

    for m in model.modules():
        if isinstance(m, BaseQuantizer):
            m.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    return export_torchscript(model, example, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="the fine-tuned FP32 model (save_pretrained folder)")
    parser.add_argument("--batches", required=True, help="torch file with 'calibration' and 'train' batch lists")
    parser.add_argument("--calibration_samples", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    import nncf

    torch.manual_seed(0)
    data = torch.load(args.batches)
    calibration = [{k: v for k, v in b.items() if k != "labels"} for b in data["calibration"]]
    out = Path(args.out_dir)
    model = build_model(args.model_dir).eval()
    t0 = time.perf_counter()
    model = nncf.quantize(
        model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER, subset_size=args.calibration_samples
    )
    ptq_s = time.perf_counter() - t0
    example = calibration[0]
    export_nncf(model, example, out / "nncf_ptq.onnx")

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    for batch in data["train"]:
        train_step(model, optimizer, batch)
    qat_s = time.perf_counter() - t0
    export_nncf(model, example, out / "nncf_qat.onnx")
    result = {
        "nncf": nncf.__version__,
        "ptq": {"onnx": str(out / "nncf_ptq.onnx"), "setup_s": ptq_s},
        "qat": {"onnx": str(out / "nncf_qat.onnx"), "train_s": qat_s, "steps": len(data["train"])},
    }
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
