"""Section 4: inference latency and file size of FP32 ONNX, hf_qat INT8 ONNX and ONNX Runtime's
static INT8, in ONNX Runtime and OpenVINO (CPU), batch 1 and 32, sequence 128; and of the OpenVINO IR
hf_qat saves (``openvino_model.xml``, converted from the INT8 ONNX) against the FP32 model's IR, in OpenVINO's
default inference precision (bf16 on CPUs that have it) and in f32.

The files are the ones the accuracy section produced (fine-tuned and trained models); without it,
all-MiniLM-L6-v2 is exported directly (hf_qat INT8 calibrated on random tokens). Runs alternate
between the files so that machine noise hits all alike; the median is kept.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .common import build_model, random_batches, runtime_threads

MODELS = (("fp32", "FP32 ONNX"), ("hf_qat_qat", "hf_qat INT8 ONNX"), ("ort_static", "ONNX Runtime static INT8"))


def export_untrained(
    work: Path, calibration_samples: int = 32, model: str = "minilm", exporter: str = "auto", **overrides
) -> dict[str, str]:
    """FP32, hf_qat INT8 and ORT static INT8 files of an untrained classifier (when section 3 did not run)."""
    from hf_qat import export_onnx

    from .accuracy import hf_qat_compress, ort_static_quantize

    work.mkdir(parents=True, exist_ok=True)
    m = build_model(model, **overrides).eval()
    calibration = random_batches(max(1, calibration_samples // 16), 16, 128, m.config.vocab_size)
    example = {k: v for k, v in calibration[0].items() if k != "labels"}
    files = {"fp32": export_onnx(m, work / "fp32.onnx", example, quantized=False, verify=False, exporter=exporter).path}
    files["ort_static"] = ort_static_quantize(files["fp32"], work / "ort_static_int8.onnx", calibration)
    _, q = hf_qat_compress(m, calibration, calibration_samples)
    files["hf_qat_qat"] = export_onnx(q, work / "hf_qat_int8.onnx", example, verify=False, exporter=exporter).path
    return {k: str(v) for k, v in files.items()}


def latency(runners: dict, feed: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each runner, the runners taking turns."""
    for r in runners.values():
        for _ in range(warmup):
            r(feed)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r(feed)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(t) for k, t in times.items()}


def run_inference(
    files: dict[str, str],
    batches: tuple[int, ...] = (1, 32),
    repeats: dict[int, int] | None = None,
    seq_len: int = 128,
    runtimes: tuple[str, ...] = ("onnxruntime", "openvino"),
    log=print,
) -> dict:
    """Sizes and latencies (ms) per file, runtime and batch size."""
    from hf_qat.onnx import OnnxRunner

    repeats = repeats or {1: 30, 32: 6}
    present = [k for k, _ in MODELS if k in files]
    sizes = {k: Path(files[k]).stat().st_size / 2**20 for k in present}
    lat: dict[str, dict[str, dict[int, float]]] = {}
    for runtime in runtimes:
        runners = {k: OnnxRunner(files[k], runtime, num_threads=runtime_threads()) for k in present}
        lat[runtime] = {k: {} for k in present}
        for b in batches:
            batch = random_batches(1, b, seq_len, labels=False, seed=3)[0]
            feed = {n: v.numpy() for n, v in batch.items()}
            for k, t in latency(
                {k: (lambda f, r=r: r({n: f[n] for n in r.input_names})) for k, r in runners.items()}, feed, repeats.get(b, 5)
            ).items():
                lat[runtime][k][b] = 1e3 * t
            log(f"  {runtime} batch {b}: " + ", ".join(f"{k} {lat[runtime][k][b]:.1f} ms" for k in present))
    ir = ir_inference(files, batches, repeats, seq_len, work=Path(files["fp32"]).parent / "openvino_ir", log=log)
    return {
        "sizes_mib": sizes,
        "latency_ms": lat,
        "openvino_ir": ir,
        "seq_len": seq_len,
        "labels": dict(MODELS),
        "repeats": {str(k): v for k, v in repeats.items()},
        "threads": runtime_threads(),
    }


def ir_inference(
    files: dict[str, str], batches: tuple[int, ...], repeats: dict[int, int], seq_len: int, work: Path, log=print
) -> dict:
    """IR sizes (xml + bin, MiB), integer weight constants and latencies (ms) of the FP32 and hf_qat INT8 files
    converted to OpenVINO IR as hf_qat saves them, per inference precision ("default", "f32") and batch size."""
    import openvino as ov

    from hf_qat.onnx import convert_to_openvino

    keys = [k for k in ("fp32", "hf_qat_qat") if k in files]
    irs = {k: convert_to_openvino(files[k], work / k / "openvino_model.xml", verify=False) for k in keys}
    core = ov.Core()
    threads = runtime_threads()
    lat: dict[str, dict[str, dict[int, float]]] = {}
    used: dict[str, str] = {}
    for precision, config in (("default", {}), ("f32", {"INFERENCE_PRECISION_HINT": "f32"})):
        if threads:
            config = {**config, "INFERENCE_NUM_THREADS": threads}
        compiled = {k: core.compile_model(core.read_model(str(irs[k].xml_path)), "CPU", config) for k in keys}
        hint = next(iter(compiled.values())).get_property("INFERENCE_PRECISION_HINT")
        used[precision] = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        requests = {k: c.create_infer_request() for k, c in compiled.items()}
        lat[precision] = {k: {} for k in keys}
        for b in batches:
            batch = random_batches(1, b, seq_len, labels=False, seed=3)[0]
            feed = {n: v.numpy() for n, v in batch.items()}

            def runner(request):
                names = {n for port in request.model_inputs for n in port.get_names()}
                return lambda f: request.infer({n: v for n, v in f.items() if n in names})

            for k, t in latency({k: runner(r) for k, r in requests.items()}, feed, repeats.get(b, 5)).items():
                lat[precision][k][b] = 1e3 * t
            log(f"  openvino IR {precision} ({used[precision]}) batch {b}: "
                + ", ".join(f"{k} {lat[precision][k][b]:.1f} ms" for k in keys))  # fmt: skip
    return {
        "sizes_mib": {k: r.file_size / 2**20 for k, r in irs.items()},
        "integer_weights": {k: r.num_integer_weights for k, r in irs.items()},
        "latency_ms": lat,
        "precision": used,
    }
