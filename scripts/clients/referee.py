"""Referee: does a folder saved by hf_qat load in the deployment clients Hugging Face users reach for?

For every folder given, with no argument beyond the folder, it loads

* ``optimum.intel.OVModelFor<Task>.from_pretrained(folder)`` (the OpenVINO IR ``openvino_model.xml`` + ``.bin``),
  once as is and once with ``ov_config={"INFERENCE_PRECISION_HINT": "f32"}`` (on a CPU with bf16 support, as this
  project's machines have, OpenVINO's default inference precision is bf16: the plain load differs from f32 by
  about 1e-2 on the logits and is reported, not judged);
* ``optimum.onnxruntime.ORTModelFor<Task>.from_pretrained(folder)`` (``model.onnx``),

records every ``warnings.warn`` and every log record at WARNING or above emitted while loading (not what OpenVINO's
C++ side prints to stderr), runs one fixed batch (text tasks: the folder's tokenizer on four fixed sentences;
images: seeded random ``pixel_values`` of the size in the ONNX input, ``preprocessor_config.json`` or
``config.json``), and compares the logits with a plain ``onnxruntime.InferenceSession(folder/model.onnx)`` on the
same feed: largest absolute difference and top-1 agreement (over the positions the attention mask keeps, for
per-token logits). INT8 kernels round differently (ONNX Runtime's own graph optimizations move such logits by ~1e-2),
so the difference is reported and top-1 is judged. When a causal-lm client fails as is, the referee also tries
``use_cache=False`` and reports that attempt as informational (it does not count in the exit status).

Exit status 1 when a client fails to load or run a folder, loads another file than the folder's
``openvino_model.xml`` / ``model.onnx`` (e.g. optimum-intel exporting the PyTorch weights again because it found no
IR), disagrees with the reference on any top-1 prediction while running in f32 (OpenVINO with the f32 hint, ONNX
Runtime), or when optimum-onnx warns that it found several ONNX files; 0 otherwise.

The clients need their own environment (optimum-onnx caps transformers below 4.58, hf_qat runs transformers 5;
hf_qat itself is not needed there, the referee reads files only)::

    bash scripts/clients/make_env.sh              # ~/.cache/hf_qat/interop-envs/clients (or $HF_QAT_ENVS/clients)
    ~/.cache/hf_qat/interop-envs/clients/bin/python scripts/clients/referee.py FOLDER [FOLDER ...] \\
        [--task text-classification|token-classification|image-classification|causal-lm] [--json report.json]

The task is read from the folder's ``qat_results.json`` (key ``task``) unless ``--task`` is given. With
``WITH_LATEST_OV=1 bash scripts/clients/make_env.sh``, the environment ``clients-ov-latest`` holds the newest
optimum-intel (2.2, transformers 5.5, no optimum-onnx): run it there with ``--clients ov``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("text-classification", "token-classification", "image-classification", "causal-lm")
CLASS_SUFFIX = {
    "text-classification": "SequenceClassification",
    "token-classification": "TokenClassification",
    "image-classification": "ImageClassification",
    "causal-lm": "CausalLM",
}
SENTENCES = [
    "the film was a delight from start to finish",
    "a dull, tedious and far too long story",
    "alice and bob flew to paris in may",
    "not bad",
]
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
SEVERAL_ONNX = "Found multiple ONNX files"
PACKAGES = ("optimum", "optimum-intel", "optimum-onnx", "transformers", "openvino", "nncf", "onnxruntime", "torch", "numpy")


@dataclass
class ClientResult:
    client: str
    expected_file: str
    loaded: bool = False
    ran: bool = False
    file: str | None = None
    f32: bool = False
    counts: bool = True  # False: an informational attempt, not part of the exit status
    max_abs_diff: float | None = None
    top1_agree: int | None = None
    top1_total: int | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    logits: list | None = None  # the client's logits, with --save-outputs

    def failures(self) -> list[str]:
        if not self.counts:
            return []
        out = []
        if not (self.loaded and self.ran):
            out.append(f"{self.client}: {'did not run' if self.loaded else 'did not load'}: {self.error}")
        elif self.file != self.expected_file:
            out.append(f"{self.client}: loaded {self.file}, not the folder's {self.expected_file}")
        elif self.f32 and self.top1_agree != self.top1_total:
            out.append(f"{self.client}: top-1 agrees on {self.top1_agree}/{self.top1_total} in f32")
        out += [f"{self.client}: several ONNX files: {w}" for w in self.warnings if SEVERAL_ONNX in w]
        return out


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"[{record.name}] {record.levelname}: {record.getMessage()}")


@contextmanager
def capture_warnings() -> Iterator[list[str]]:
    """Collects ``warnings.warn`` calls and log records at WARNING or above (also of loggers that do not propagate,
    as transformers' and optimum's do not)."""
    handler = _Capture()
    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger) and not lg.propagate
    ]
    for lg in loggers:
        lg.addHandler(handler)
    out: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield out
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        out += [f"{w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})" for w in caught]
        out += handler.records


def folder_task(folder: Path, task: str | None) -> str:
    if task is None:
        results = folder / "qat_results.json"
        if not results.is_file():
            raise ValueError("no qat_results.json; give --task")
        task = json.loads(results.read_text())["task"]
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    return task


def make_feeds(folder: Path, task: str, session: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The fixed batch: what the clients are called with, and the reference's feed (every input the ONNX graph
    declares; for a KV-cache decoder also ``position_ids`` as the clients make them and an empty past)."""
    inputs = session.get_inputs()
    if task == "image-classification":
        shape = inputs[0].shape
        config = json.loads((folder / "config.json").read_text())
        pre = folder / "preprocessor_config.json"
        size = json.loads(pre.read_text()).get("size", {}) if pre.is_file() else {}
        side = size.get("shortest_edge") or config.get("image_size", 224)
        hw = [d if isinstance(d, int) else size.get(k, side) for d, k in zip(shape[2:4], ("height", "width"))]
        channels = shape[1] if isinstance(shape[1], int) else config.get("num_channels", 3)
        pixels = np.random.default_rng(0).standard_normal((2, channels, *hw)).astype(np.float32)
        return {"pixel_values": pixels}, {inputs[0].name: pixels}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=32, return_tensors="np")
    wanted = ("input_ids", "attention_mask", "token_type_ids")
    feed = {k: v.astype(np.int64) for k, v in enc.items() if k in wanted}
    if task == "causal-lm":
        feed.pop("token_type_ids", None)
    mask = feed["attention_mask"]
    ref: dict[str, np.ndarray] = {}
    for i in inputs:
        if i.name in feed:
            ref[i.name] = feed[i.name]
        elif i.name == "token_type_ids":
            ref[i.name] = np.zeros_like(feed["input_ids"])
        elif i.name == "position_ids":
            ref[i.name] = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
        elif i.name.startswith("past_key_values"):
            dims = [len(SENTENCES) if n == 0 else (d if isinstance(d, int) else 0) for n, d in enumerate(i.shape)]
            ref[i.name] = np.zeros(dims, dtype=np.float16 if "float16" in i.type else np.float32)
        else:
            raise ValueError(f"model.onnx wants input {i.name!r}, which the referee cannot make")
    return feed, ref


def compare(result: ClientResult, logits: np.ndarray, ref: np.ndarray, feed: dict[str, np.ndarray]) -> None:
    if logits.shape != ref.shape:
        raise ValueError(f"logits of shape {logits.shape}, the reference's are {ref.shape}")
    keep = np.ones(ref.shape[:-1], dtype=bool)
    if ref.ndim == 3 and "attention_mask" in feed:  # per-token logits: padding positions are not compared
        keep = feed["attention_mask"].astype(bool)
    result.max_abs_diff = float(np.abs(logits - ref)[keep].max())
    result.top1_agree = int((logits.argmax(-1) == ref.argmax(-1))[keep].sum())
    result.top1_total = int(keep.sum())


def loaded_file(model: Any, folder: Path) -> str:
    """The file a client loaded, relative to the folder (ORT: the session's file; OV: openvino_model.xml of its
    model_save_dir, a temporary folder when optimum-intel exported the model again instead of loading the IR)."""
    path = getattr(model, "path", None)
    if path is None:
        save_dir = model.model_save_dir
        path = Path(save_dir.name if isinstance(save_dir, tempfile.TemporaryDirectory) else save_dir) / "openvino_model.xml"
    # absolute, not resolved: a hub download's files are symlinks from the snapshot folder into the cache's blobs
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def run_client(
    name: str, load: Callable[[], Any], folder: Path, feed: dict[str, np.ndarray], ref: np.ndarray, f32: bool
) -> ClientResult:
    import torch

    result = ClientResult(name, "openvino_model.xml" if name.startswith("optimum-intel") else "model.onnx", f32=f32)
    caught: list[str] = []
    try:
        try:
            with capture_warnings() as caught:
                model = load()
        finally:
            result.warnings = caught
        result.loaded = True
        result.file = loaded_file(model, folder)
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        logits = np.asarray(out.logits.detach().numpy() if hasattr(out.logits, "detach") else out.logits)
        compare(result, logits, ref, feed)
        result.logits = logits.tolist()
        result.ran = True
    except Exception as e:  # every failure is a finding to report
        result.error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        traceback.print_exc(limit=3, file=sys.stderr)
    return result


def client_classes(task: str, clients: list[str]) -> dict[str, Any]:
    """``{"ov": OVModelFor<Task>, "ort": ORTModelFor<Task>}`` for the clients asked for (ImportError if one is missing:
    a client asked for and not installed is an environment to fix, not a pass)."""
    out: dict[str, Any] = {}
    if "ov" in clients:
        import optimum.intel

        out["ov"] = getattr(optimum.intel, f"OVModelFor{CLASS_SUFFIX[task]}")
    if "ort" in clients:
        import optimum.onnxruntime

        out["ort"] = getattr(optimum.onnxruntime, f"ORTModelFor{CLASS_SUFFIX[task]}")
    return out


def referee_folder(folder: Path, task: str, clients: list[str], source: str | None = None) -> dict[str, Any]:
    """Referee one folder; ``source`` (a hub repo id whose download ``folder`` is) is what the clients load instead."""
    import onnxruntime as ort

    classes = client_classes(task, clients)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed, ref_feed = make_feeds(folder, task, session)
    ref = session.run(["logits"], ref_feed)[0]
    where = source or str(folder)
    # (name, class, extra from_pretrained arguments, runs in f32)
    plan: list[tuple[str, Any, dict[str, Any], bool]] = []
    if "ov" in classes:
        plan += [("optimum-intel", classes["ov"], {}, False), ("optimum-intel f32", classes["ov"], {"ov_config": F32}, True)]
    if "ort" in classes:
        plan.append(("optimum-onnx", classes["ort"], {}, True))
    results = []
    for name, cls, extra, f32 in plan:
        results.append(run_client(name, lambda c=cls, x=extra: c.from_pretrained(where, **x), folder, feed, ref, f32))
        if task == "causal-lm" and f32 and not results[-1].ran:
            retry = run_client(
                f"{name} (use_cache=False)",
                lambda c=cls, x=extra: c.from_pretrained(where, use_cache=False, **x),
                folder,
                feed,
                ref,
                f32,
            )
            retry.counts = False
            results.append(retry)
    return {
        "folder": where,
        "task": task,
        "feed": {k: list(v.shape) for k, v in feed.items()},
        "inputs": {k: v.tolist() for k, v in ref_feed.items()},  # what model.onnx was run on
        "reference_logits": ref.tolist(),  # onnxruntime.InferenceSession(model.onnx) on those inputs
        "clients": results,
    }


def line(folder: str, r: ClientResult) -> str:
    status = "ok" if r.loaded and r.ran else ("RUN FAILED" if r.loaded else "LOAD FAILED")
    parts = [f"{folder} | {r.client:<34} {status:<11}"]
    if r.ran:
        parts.append(f"file={r.file} max_abs_diff={r.max_abs_diff:.3g} top1={r.top1_agree}/{r.top1_total}")
    elif r.error:
        parts.append(r.error[:200])
    parts.append(f"warnings={len(r.warnings)}" + ("" if r.counts else " (informational)"))
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--task", choices=TASKS, default=None, help="default: qat_results.json's task")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    parser.add_argument(
        "--clients", default="ov,ort", help="comma-separated: ov (optimum-intel), ort (optimum-onnx); default both"
    )
    parser.add_argument(
        "--hub-endpoint",
        default=None,
        help="the positional arguments are repo ids on this hub (HF_ENDPOINT; a token in HF_TOKEN): the clients load "
        "the repo id itself, the reference a download of it",
    )
    parser.add_argument(
        "--save-outputs",
        action="store_true",
        help="keep the inputs, the reference logits and each client's logits in the --json report (folders are "
        "then named relative to the report's folder)",
    )
    args = parser.parse_args(argv)
    if args.hub_endpoint:  # before huggingface_hub is imported: it reads these once
        os.environ.update(HF_ENDPOINT=args.hub_endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
        os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_qat_referee_home_"))
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.pop(key, None)

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    print("versions: " + " ".join(f"{k}={v}" for k, v in versions.items()))
    reports, failures = [], []
    for folder in args.folders:
        source = None
        try:
            if args.hub_endpoint:
                from huggingface_hub import snapshot_download

                source, folder = str(folder), Path(snapshot_download(str(folder)))
            report = referee_folder(folder, folder_task(folder, args.task), args.clients.split(","), source)
        except Exception as e:  # no tokenizer, no model.onnx, ...: the folder fails, the others run
            traceback.print_exc(limit=3, file=sys.stderr)
            failures.append(f"{folder}: cannot referee: {type(e).__name__}: {e}")
            reports.append({"folder": str(folder), "error": failures[-1]})
            print(f"{folder} | {failures[-1]}")
            continue
        for r in report["clients"]:
            print(line(source or str(folder), r))
            for w in r.warnings:
                print(f"    warning: {w[:300]}")
            failures += [f"{folder}: {f}" for f in r.failures()]
        clients = [asdict(r) for r in report["clients"]]
        if not (args.save_outputs and args.json):
            report = {k: v for k, v in report.items() if k not in ("inputs", "reference_logits")}
            for c in clients:
                c.pop("logits")
        elif source is None:
            report["folder"] = str(Path(report["folder"]).resolve().relative_to(args.json.resolve().parent))
        reports.append({**report, "clients": clients})
    if args.json:
        report_json = {"versions": versions, "folders": reports, "failures": failures}
        # with the outputs the report is mostly arrays: one line per folder entry keeps it small and diffable
        args.json.write_text(json.dumps(report_json, indent=None if args.save_outputs else 2) + "\n")
    for f in failures:
        print(f"FAIL {f}")
    print(f"{len(args.folders)} folder(s), {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
