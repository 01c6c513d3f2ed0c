"""OpenVINO IR from a verified INT8 ONNX file: conversion, an INT8 check, and verification in OpenVINO.

The IR is what OpenVINO deploys (``openvino_model.xml`` + ``openvino_model.bin``, the names optimum-intel's
``OVModelFor*`` classes load). It is converted from the ONNX file hf_qat exported and verified, so both compute on
the same trained grids; the conversion keeps the integer weights as integer constants (checked by element type,
not by file size) and the float constants in float32 (no fp16 compression).

Verification runs the IR in OpenVINO twice on the same inputs and compares its outputs with ONNX Runtime's on the
ONNX file: in **f32** inference precision, which must agree (arg-max agreement at least ``min_top1``), and in the
CPU plugin's **default** precision, reported only: on CPUs with bf16 support OpenVINO runs the float parts of the
graph in bf16 by default, which moves outputs by more than quantization steps. To reproduce the trained model
exactly, compile with ``{"INFERENCE_PRECISION_HINT": "f32"}`` (``ov_config=`` in optimum-intel).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.layout import OPENVINO_BIN_NAME, OPENVINO_XML_NAME, remove_openvino_files
from ..errors import ExportError
from .runtime import OnnxRunner

__all__ = [
    "OPENVINO_XML_NAME",
    "OPENVINO_BIN_NAME",
    "INTEGER_ELEMENT_TYPES",
    "PrecisionCheck",
    "OpenVINOResult",
    "convert_to_openvino",
    "remove_openvino_files",
]

#: OpenVINO element types of quantized weights.
INTEGER_ELEMENT_TYPES = ("i8", "u8", "i4", "u4")
_ONNX_INTEGER_TYPES = {2: "uint8", 3: "int8", 21: "uint4", 22: "int4"}


@dataclass
class PrecisionCheck:
    """The IR in one OpenVINO inference precision against ONNX Runtime on the ONNX file.

    Attributes:
        precision: ``"f32"`` or ``"default"`` (the CPU plugin's own choice).
        inference_precision: what the compiled model reports (``f32``, ``bf16``, ``f16``).
        max_abs_diff / mean_abs_diff: over all outputs, elements and batches.
        top1_agreement: fraction of rows whose arg-max over the last axis agrees, over outputs with a class axis
            (``None`` when no output has one).
        num_rows: rows the agreement was computed over.
        required: whether this check must pass (the f32 one) or is reported only (the default one).
        ok: whether it passed (always ``True`` for a reported-only check).
    """

    precision: str
    inference_precision: str
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float | None
    num_rows: int
    required: bool
    ok: bool

    def __str__(self) -> str:
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.1%} of {self.num_rows} rows"
        flag = "ok" if self.ok else "FAILED"
        kind = "checked" if self.required else "reported"
        return (
            f"OpenVINO {self.precision} ({self.inference_precision}, {kind}): top-1 agreement {top1}, "
            f"max |diff| {self.max_abs_diff:.3g}, mean {self.mean_abs_diff:.3g} [{flag}]"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class OpenVINOResult:
    """What :func:`convert_to_openvino` wrote and how it was checked.

    Attributes:
        xml_path / bin_path: the IR files.
        source: the ONNX file it was converted from.
        file_size: bytes of both files.
        constant_types: element type -> number of ``Constant`` nodes of that type in the IR.
        num_integer_weights: integer constants in the IR (element types :data:`INTEGER_ELEMENT_TYPES`).
        num_onnx_integer_weights: integer initializers in the ONNX file (what the IR must keep).
        checks: the f32 and default-precision comparisons (empty when verification was off).
        export: the framework's ONNX export result the IR was converted from, when known.
    """

    xml_path: Path
    bin_path: Path
    source: Path
    file_size: int
    constant_types: dict[str, int]
    num_integer_weights: int
    num_onnx_integer_weights: int
    checks: list[PrecisionCheck] = field(default_factory=list)
    export: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, precision: str) -> PrecisionCheck | None:
        return next((c for c in self.checks if c.precision == precision), None)

    def __str__(self) -> str:
        lines = [
            f"{self.xml_path} (+ .bin, {self.file_size / 2**20:.2f} MiB): {self.num_integer_weights} integer weight "
            f"constants (ONNX file: {self.num_onnx_integer_weights}), constants by type {self.constant_types}"
        ]
        lines += [f"  {c}" for c in self.checks]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (for ``qat_results.json`` and the model card)."""
        return {
            "file": self.xml_path.name,
            "size_bytes": self.file_size,
            "integer_weight_constants": self.num_integer_weights,
            "onnx_integer_weights": self.num_onnx_integer_weights,
            "constant_types": dict(self.constant_types),
            "checks": {c.precision: c.to_dict() for c in self.checks},
        }


def _openvino():
    try:
        import openvino as ov
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('OpenVINO is not installed: pip install "hf_qat[onnx]" (or openvino)') from e
    return ov


def _onnx_integer_weights(path: Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    integer = {t.name for t in graph.initializer if t.data_type in _ONNX_INTEGER_TYPES}
    return len({n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in integer})


def _constant_types(model: Any) -> Counter:
    return Counter(op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant")


def _compare(
    reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]]
) -> tuple[float, float, float | None, int]:
    max_diff, total, count, agree, rows = 0.0, 0.0, 0, 0, 0
    for ref, out in zip(reference, actual):
        for name, r in ref.items():
            a = np.asarray(out[name], dtype=np.float64)
            r = np.asarray(r, dtype=np.float64)
            if a.shape != r.shape:
                raise ExportError(f"OpenVINO output {name!r} has shape {a.shape}, ONNX Runtime's {r.shape}")
            d = np.abs(a - r)
            if d.size:
                max_diff = max(max_diff, float(d.max()))
                total += float(d.sum())
                count += d.size
            if r.ndim >= 2 and r.shape[-1] > 1 and np.issubdtype(r.dtype, np.floating):
                agree += int((a.argmax(-1) == r.argmax(-1)).sum())
                rows += int(np.prod(r.shape[:-1]))
    return max_diff, total / max(count, 1), (agree / rows if rows else None), rows


def _run_ir(
    xml: Path, inputs: Sequence[Mapping[str, np.ndarray]], output_names: list[str], config: dict
) -> tuple[list[dict[str, np.ndarray]], str]:
    ov = _openvino()
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    request = compiled.create_infer_request()
    by_name = {}
    for port in compiled.inputs:
        for name in port.get_names():
            by_name[name] = port
    outs = []
    for batch in inputs:
        missing = [n for n in batch if n not in by_name]
        if missing:
            raise ExportError(f"the IR has no input named {missing}; its inputs are {sorted(by_name)}")
        result = request.infer({by_name[n]: np.ascontiguousarray(v) for n, v in batch.items()})
        outs.append({name: np.asarray(result[port]) for name, port in zip(output_names, compiled.outputs)})
    return outs, precision


def convert_to_openvino(
    onnx_path: str | os.PathLike,
    xml_path: str | os.PathLike | None = None,
    inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    *,
    min_top1: float = 0.9,
    verify: bool = True,
) -> OpenVINOResult:
    """Convert an INT8 ONNX file to OpenVINO IR, check its weights stayed integer, and verify it in OpenVINO.

    Args:
        onnx_path: the ONNX file (as hf_qat exports it).
        xml_path: the ``.xml`` to write (its ``.bin`` goes beside it); default ``openvino_model.xml`` in the ONNX
            file's folder. Both files are written to a temporary folder first and then moved into place; on
            failure nothing is left at ``xml_path``.
        inputs: batches ``{input_name: array}`` to verify on (required when ``verify``).
        min_top1: smallest arg-max agreement with ONNX Runtime in f32 precision.
        verify: run the checks of the module docstring.

    Returns:
        [`OpenVINOResult`].

    Raises:
        [`ExportError`]: OpenVINO cannot convert or run the file, the IR lost the integer weights of the ONNX
            file, or the f32 check failed. The error says why; any IR previously at ``xml_path`` is removed, so
            a folder never holds an IR that does not match its ONNX file.
        `ImportError`: OpenVINO is not installed.
    """
    ov = _openvino()
    onnx_path = Path(onnx_path)
    xml = Path(xml_path) if xml_path is not None else onnx_path.parent / OPENVINO_XML_NAME
    if xml.suffix != ".xml":
        raise ValueError(f"xml_path must end in .xml (OpenVINO writes the .bin beside it), got {xml}")
    if verify and not inputs:
        raise ValueError("verify=True needs inputs: one or more batches {input_name: array}")
    bin_path = xml.with_suffix(".bin")
    for stale in (xml, bin_path):
        if stale.exists():
            stale.unlink()
    xml.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:
        raise ExportError(f"OpenVINO could not convert {onnx_path}: {type(e).__name__}: {str(e).strip()[:400]}") from e
    types = _constant_types(model)
    num_int = sum(types.get(t, 0) for t in INTEGER_ELEMENT_TYPES)
    num_onnx_int = _onnx_integer_weights(onnx_path)
    if num_int < num_onnx_int:
        raise ExportError(
            f"The OpenVINO IR of {onnx_path} holds {num_int} integer constants, the ONNX file {num_onnx_int} integer "
            f"weights: OpenVINO turned quantized weights into float ({dict(types)}). No IR was written."
        )
    tmp = Path(tempfile.mkdtemp(prefix=".openvino-", dir=xml.parent))
    try:
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=False)
        result = OpenVINOResult(
            xml, bin_path, onnx_path, sum(f.stat().st_size for f in tmp.iterdir()), dict(types), num_int, num_onnx_int
        )
        if verify:
            result.checks = _verify(tmp / xml.name, onnx_path, inputs, min_top1)
            failed = [c for c in result.checks if not c.ok]
            if failed:
                raise ExportError(
                    f"The OpenVINO IR converted from {onnx_path} does not match ONNX Runtime: {failed[0]}. No IR was written."
                )
        os.replace(tmp / bin_path.name, bin_path)
        os.replace(tmp / xml.name, xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _verify(xml: Path, onnx_path: Path, inputs: Sequence[Mapping[str, np.ndarray]], min_top1: float) -> list[PrecisionCheck]:
    runner = OnnxRunner(onnx_path, "onnxruntime")
    batches = [{n: np.asarray(b[n]) for n in runner.input_names} for b in inputs]
    reference = [runner(b) for b in batches]
    checks = []
    for precision, config in (("f32", {"INFERENCE_PRECISION_HINT": "f32"}), ("default", {})):
        try:
            actual, used = _run_ir(xml, batches, runner.output_names, config)
        except ExportError:  # already says what is wrong
            raise
        except Exception as e:
            raise ExportError(f"OpenVINO could not run the IR of {onnx_path}: {type(e).__name__}: {str(e)[:400]}") from e
        max_diff, mean_diff, top1, rows = _compare(reference, actual)
        required = precision == "f32"
        ok = not required or top1 is None or top1 >= min_top1
        checks.append(PrecisionCheck(precision, used, max_diff, mean_diff, top1, rows, required, ok))
    return checks
