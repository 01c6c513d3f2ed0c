"""hf_qat benchmark suite: hf_qat and its peers on the same work, side by side, in one run.

Regenerate ``BENCHMARKS.md`` and its plot (from the repository root)::

    python -m scripts.benchmarks

Sections (``--sections``): ``training`` (step time and memory, QAT vs FP32, with NNCF 3.4 and
torch.ao eager QAT), ``accuracy`` (SST-2: FP32, PTQ, ONNX Runtime static INT8, NNCF PTQ/QAT,
hf_qat QAT, evaluated as deployed), ``inference`` (ONNX latency and size in ONNX Runtime and
OpenVINO) and ``scaling`` (step and calibration time against layers, hidden size and sequence
length). NNCF runs in its own virtual environment, created on first use (:mod:`.nncf_env`).
"""
