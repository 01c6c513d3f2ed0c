"""Run an ONNX file in ONNX Runtime or OpenVINO (framework-neutral).

Both runtimes are optional dependencies (``pip install "hf_qat[onnx]"``); a missing one raises an
``ImportError`` saying what to install.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RUNTIMES", "OnnxRunner", "load_runner", "optimized_op_counts"]

RUNTIMES = ("onnxruntime", "openvino")


class OnnxRunner:
    """A loaded ONNX model: call it with ``{input_name: array}``, get ``{output_name: array}``.

    Args:
        path: the ``.onnx`` file (or its bytes, ONNX Runtime only).
        runtime: ``"onnxruntime"`` or ``"openvino"`` (CPU).
        optimize: graph optimisations on (the runtime's default) or off (ONNX Runtime only:
            ``ORT_DISABLE_ALL``, which runs the graph node by node as written).
        num_threads: intra-op threads (``None``: the runtime's default).
    """

    def __init__(
        self, path: str | os.PathLike | bytes, runtime: str = "onnxruntime", optimize: bool = True, num_threads: int | None = None
    ):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if isinstance(path, bytes) and runtime != "onnxruntime":
            raise ValueError("an in-memory model can only run in onnxruntime")
        self.path = path if isinstance(path, bytes) else Path(path)
        self.runtime = runtime
        self.optimize = optimize
        if runtime == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError('ONNX Runtime is not installed: pip install "hf_qat[onnx]" (or onnxruntime)') from e
            options = ort.SessionOptions()
            if not optimize:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if num_threads is not None:
                options.intra_op_num_threads = num_threads
            options.log_severity_level = 3
            source = self.path if isinstance(self.path, bytes) else str(self.path)
            self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self._session.get_inputs()]
            self.output_names = [o.name for o in self._session.get_outputs()]
        else:
            try:
                import openvino as ov
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ImportError('OpenVINO is not installed: pip install "hf_qat[onnx]" (or openvino)') from e
            core = ov.Core()
            config: dict[str, Any] = {}
            if num_threads is not None:
                config["INFERENCE_NUM_THREADS"] = num_threads
            # f32 inference precision: OpenVINO may otherwise run FP32 layers in bf16/f16 on some CPUs
            config["INFERENCE_PRECISION_HINT"] = "f32"
            self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
            self._request = self._compiled.create_infer_request()
            # OpenVINO keeps the ONNX graph's input/output order; its tensor names may differ
            import onnx

            graph = onnx.load(str(self.path), load_external_data=False).graph
            initializers = {t.name for t in graph.initializer}
            self.input_names = [i.name for i in graph.input if i.name not in initializers]
            self.output_names = [o.name for o in graph.output]
            self._ov_inputs = list(self._compiled.inputs)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"missing input(s) {missing}; the model takes {self.input_names}")
        feed = {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}
        if self.runtime == "onnxruntime":
            outs = self._session.run(self.output_names, feed)
            return dict(zip(self.output_names, outs))
        result = self._request.infer({port: feed[n] for port, n in zip(self._ov_inputs, self.input_names)})
        return {name: np.asarray(result[out]) for name, out in zip(self.output_names, self._compiled.outputs)}


def load_runner(
    path: str | os.PathLike, runtime: str = "onnxruntime", optimize: bool = True, num_threads: int | None = None
) -> OnnxRunner:
    """Load ``path`` in ``runtime``; see [`OnnxRunner`]."""
    return OnnxRunner(path, runtime, optimize, num_threads)


def optimized_op_counts(path: str | os.PathLike) -> dict[str, int]:
    """Operators of the graph ONNX Runtime (CPU) actually runs for ``path``, after its default optimisations:
    which QDQ patterns it fused into integer kernels (``MatMulNBits`` for 4-bit weights, ``MatMulIntegerToFloat``,
    ``QLinearMatMul`` ...). ``{op_type: count}``, most frequent first."""
    import tempfile
    from collections import Counter

    import onnx

    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('ONNX Runtime is not installed: pip install "hf_qat[onnx]" (or onnxruntime)') from e
    with tempfile.TemporaryDirectory(prefix="hf_qat_ort_") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
        return dict(Counter(n.op_type for n in graph.node).most_common())
