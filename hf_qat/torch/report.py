"""Per-layer quantization error of a QAT model: the SQNR of every quantized layer's output against the float model.

The float model and the QAT model run on the same batches (eval mode, no gradients). Forward hooks catch the output
of each quantized layer (a layer whose class hf_qat swapped, :mod:`hf_qat.torch.layers`) in the QAT model and of the
module at the same path in the float model (compression keeps module paths), and the report accumulates, over all
batches, the signal-to-quantization-noise ratio of that output:

    SQNR_dB = 10 * log10(sum(fp32 ** 2) / sum((fp32 - qat) ** 2))

The error at a layer includes everything upstream of it, so the SQNR tends to fall along the network; where it
drops is where accuracy goes. The *local* SQNR separates the layer's own share: the QAT layer (its weight, input and
output quantizers) is fed the float layer's input and compared with the float layer's output. After QAT the weights
themselves have moved from the float model's, so both numbers include that drift as well as fake quantization.

```python
import copy, hf_qat
fp32_model = copy.deepcopy(model)                      # before create_compressed_model, which works in place
ctrl, model = hf_qat.create_compressed_model(model, config)
# ... QAT ...
report = ctrl.quantization_report(fp32_model, eval_batches)   # or hf_qat.quantization_report(fp32_model, model, ...)
print(report.to_markdown(10))                          # the ten worst layers
report.plot("sqnr.png")
```
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..utils.imports import require
from ..utils.io import atomic_write_bytes
from .init import InitializingDataLoader, _to_device, batch_size_of
from .inputs import filter_kwargs
from .layers import is_wrapped, nncf_class_name

__all__ = ["LAYER_REPORT_FORMAT", "LayerSQNR", "LayerReport", "quantization_report"]

#: ``format`` of :meth:`LayerReport.to_dict` (with ``version``), for readers of the saved form.
LAYER_REPORT_FORMAT = "hf_qat.layer_report"
_VERSION = 1


@dataclass(frozen=True)
class LayerSQNR:
    """The quantization error of one quantized layer's output.

    Attributes:
        scope (`str`): the layer's NNCF scope, e.g.
            ``BertForSequenceClassification/BertModel[bert]/.../BertSelfAttention[self]/NNCFLinear[query]``.
        path (`str`): its module path in both models (``bert.encoder.layer.0.attention.self.query``).
        layer_type (`str`): the layer's original class name (``Linear``, ``Conv2d``, ``Embedding``, ``Conv1D`` ...).
        weight_bits (`int` or `None`): bits of its weight quantizer (``None``: the weight is not quantized).
        input_bits (`int` or `None`): bits of its input quantizer (``None``: the input is not quantized).
        sqnr_db (`float`): SQNR of the QAT model's output of this layer against the float model's, in dB, over all
            batches; ``inf`` when they are identical, ``-inf`` when the float output is all zeros and the QAT one
            is not, ``nan`` when the QAT output holds NaN.
        local_sqnr_db (`float` or `None`): the same for the QAT layer fed the float layer's input (its own error);
            ``None`` when not computed.
    """

    scope: str
    path: str
    layer_type: str
    weight_bits: int | None
    input_bits: int | None
    sqnr_db: float
    local_sqnr_db: float | None = None


@dataclass(frozen=True)
class LayerReport:
    """Per-layer SQNR of a QAT model against its float model (what :func:`quantization_report` returns).

    Attributes:
        rows (`tuple[LayerSQNR, ...]`): one per quantized layer that ran, in network order (first call in the
            float model's forward).
        num_batches (`int`): batches the numbers were accumulated over.
        num_samples (`int`): samples in those batches (the first dimension of the first tensor input).
        not_run (`tuple[str, ...]`): module paths of quantized layers that no batch reached (no numbers).
    """

    rows: tuple[LayerSQNR, ...]
    num_batches: int
    num_samples: int
    not_run: tuple[str, ...] = field(default=())

    def worst(self, n: int = 10, by: Literal["sqnr", "local"] = "sqnr") -> list[LayerSQNR]:
        """The ``n`` layers with the lowest SQNR, lowest first (NaN counts as the worst).

        Args:
            n (`int`, *optional*, defaults to 10): how many.
            by (`str`, *optional*, defaults to ``"sqnr"``): ``"sqnr"`` (accumulated through the network) or
                ``"local"`` (the layer's own error; layers without a local SQNR come last).

        Raises:
            `ValueError`: ``by`` is neither ``"sqnr"`` nor ``"local"``, or ``n`` is negative.
        """
        if by not in ("sqnr", "local"):
            raise ValueError(f"by={by!r} is not a column of the report: expected 'sqnr' or 'local'.")
        if n < 0:
            raise ValueError(f"n={n} is negative: expected the number of layers to return (0 or more).")
        attr = "sqnr_db" if by == "sqnr" else "local_sqnr_db"
        return sorted(self.rows, key=lambda r: _badness(getattr(r, attr)))[:n]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form (``json.dumps(report.to_dict(), allow_nan=False)`` works).

        Returns:
            `dict`: ``{"format": "hf_qat.layer_report", "version": 1, "num_batches": int, "num_samples": int,
            "rows": [{"scope": str, "path": str, "layer_type": str, "weight_bits": int | None, "input_bits": int |
            None, "sqnr_db": float | str, "local_sqnr_db": float | str | None}, ...], "not_run": [str, ...]}``, rows
            in network order. Non-finite values are the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (``float()``
            reads them back); ``None`` (JSON ``null``) means "not computed".
        """
        return {
            "format": LAYER_REPORT_FORMAT,
            "version": _VERSION,
            "num_batches": self.num_batches,
            "num_samples": self.num_samples,
            "rows": [
                {
                    "scope": r.scope,
                    "path": r.path,
                    "layer_type": r.layer_type,
                    "weight_bits": r.weight_bits,
                    "input_bits": r.input_bits,
                    "sqnr_db": _json_float(r.sqnr_db),
                    "local_sqnr_db": None if r.local_sqnr_db is None else _json_float(r.local_sqnr_db),
                }
                for r in self.rows
            ],
            "not_run": list(self.not_run),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerReport:
        """The report :meth:`to_dict` (or its JSON) describes.

        Raises:
            `ValueError`: ``data`` is not a layer report of a version this hf_qat reads.
        """
        if data.get("format") != LAYER_REPORT_FORMAT or data.get("version") != _VERSION:
            raise ValueError(
                f"Not a layer report: format {data.get('format')!r} version {data.get('version')!r}, expected "
                f"{LAYER_REPORT_FORMAT!r} version {_VERSION} (LayerReport.to_dict())."
            )
        rows = tuple(
            LayerSQNR(
                scope=r["scope"],
                path=r["path"],
                layer_type=r["layer_type"],
                weight_bits=r.get("weight_bits"),
                input_bits=r.get("input_bits"),
                sqnr_db=float(r["sqnr_db"]),
                local_sqnr_db=None if r.get("local_sqnr_db") is None else float(r["local_sqnr_db"]),
            )
            for r in data["rows"]
        )
        return cls(rows, int(data["num_batches"]), int(data["num_samples"]), tuple(data.get("not_run", ())))

    def to_markdown(self, n: int | None = 10, by: Literal["sqnr", "local"] = "sqnr") -> str:
        """A markdown table: the ``n`` worst layers, worst first, or with ``n=None`` every layer in network order.

        Columns: ``#`` (position in network order), scope, type, weight bits, SQNR dB, local SQNR dB (one decimal;
        ``inf``, ``-inf``, ``nan``; ``n/a`` when not computed).
        """
        rows = list(self.rows) if n is None else self.worst(n, by)
        index = {r.path: i for i, r in enumerate(self.rows)}
        lines = ["| # | scope | type | weight bits | SQNR dB | local SQNR dB |", "|---:|---|---|---:|---:|---:|"]
        for r in rows:
            bits = "-" if r.weight_bits is None else str(r.weight_bits)
            scope = r.scope.replace("|", "\\|")
            lines.append(
                f"| {index[r.path]} | `{scope}` | {r.layer_type} | {bits} | {_fmt_db(r.sqnr_db)} | {_fmt_db(r.local_sqnr_db)} |"
            )
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike, *, highlight: int = 10, title: str | None = None) -> Path:
        """Write a PNG of the SQNR per layer in network order, the ``highlight`` worst in red (written atomically).

        Bars are the SQNR accumulated through the network; dots, when computed, the local SQNR. Layers whose
        outputs are identical (``inf``) are drawn as hatched bars above the others; ``nan`` and ``-inf`` as a cross
        at the bottom. Uses matplotlib's Agg canvas (no display, no change to pyplot's backend).

        Args:
            path (`str` or `os.PathLike`): the ``.png`` file to write.
            highlight (`int`, *optional*, defaults to 10): how many of the worst layers to colour.
            title (`str`, *optional*): the figure's title (default: what it shows).

        Returns:
            `Path`: ``path``.

        Raises:
            [`MissingDependencyError`]: matplotlib is not installed.
            `ValueError`: the report has no rows.
            [`WriteError`]: the file could not be written (``path`` is left as it was).
        """
        require("matplotlib", feature="LayerReport.plot", extra="bench")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        if not self.rows:
            raise ValueError("The report has no rows to plot: no quantized layer ran on the batches.")
        rows = self.rows
        n = len(rows)
        worst = {r.path for r in self.worst(highlight)}
        finite = [v for r in rows for v in (r.sqnr_db, r.local_sqnr_db) if v is not None and math.isfinite(v)]
        low, high = min([0.0, *finite]), max(finite, default=1.0)
        ceiling = high + 0.08 * ((high - low) or 1.0)

        fig = Figure(figsize=(min(max(8.0, 0.22 * n + 2.0), 40.0), 5.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        x = list(range(n))
        colors = ["tab:red" if r.path in worst else "tab:blue" for r in rows]
        heights = [r.sqnr_db if math.isfinite(r.sqnr_db) else (ceiling if r.sqnr_db == math.inf else 0.0) for r in rows]
        bars = ax.bar(x, heights, color=colors, width=0.8)
        for bar, r in zip(bars, rows):
            if r.sqnr_db == math.inf:
                bar.set_hatch("//")
                bar.set_alpha(0.4)
        handles = [
            Patch(color="tab:blue", label="SQNR through the network"),
            Patch(color="tab:red", label=f"worst {min(highlight, n)} (SQNR)"),
        ]
        if any(r.sqnr_db == math.inf for r in rows):
            handles.append(Patch(facecolor="tab:blue", alpha=0.4, hatch="//", label="identical output (inf)"))
        bad = [i for i, r in enumerate(rows) if math.isnan(r.sqnr_db) or r.sqnr_db == -math.inf]
        if bad:
            handles.append(ax.scatter(bad, [low] * len(bad), marker="x", color="black", zorder=3, label="nan / -inf"))
        local = [(i, r.local_sqnr_db) for i, r in enumerate(rows) if r.local_sqnr_db is not None]
        if local:
            ys = [v if math.isfinite(v) else (ceiling if v == math.inf else low) for _, v in local]
            handles.append(ax.scatter([i for i, _ in local], ys, s=12, color="black", zorder=3, label="local SQNR (float input)"))
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel("SQNR (dB)")
        ax.set_xlabel(f"quantized layers in network order ({self.num_samples} samples, {self.num_batches} batches)")
        ax.set_title(title or "Per-layer SQNR of the QAT model against the float model")
        labeled = x if n <= 60 else [i for i, r in enumerate(rows) if r.path in worst]
        ax.set_xticks(labeled)
        ax.set_xticklabels([rows[i].path for i in labeled], rotation=90, fontsize=7)
        for tick in ax.get_xticklabels():
            if tick.get_text() in worst:
                tick.set_color("tab:red")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        atomic_write_bytes(path, buffer.getvalue(), "SQNR plot")
        return Path(path)


def quantization_report(
    fp32_model: nn.Module,
    qat_model: nn.Module,
    batches: Iterable[Any] | Mapping[str, Any] | torch.Tensor,
    *,
    local: bool = True,
    max_batches: int | None = None,
) -> LayerReport:
    """The SQNR of every quantized layer's output of ``qat_model`` against ``fp32_model``, on the same batches.

    Both models run in eval mode without gradients (their train/eval flags are restored afterwards). For a
    transformers QAT model, whose compression switched attention to ``eager``, the float model runs with the same
    attention implementation for the duration, so that kernel differences do not count as quantization error.
    Memory: the float model's output of every quantized layer for one batch is kept until the QAT model has run on
    that batch.

    Args:
        fp32_model (`nn.Module`): the float model ``qat_model`` was compressed from (same architecture and module
            paths): a ``copy.deepcopy`` made before ``create_compressed_model`` (which works in place), or the base
            model loaded again. Not the compressed model itself.
        qat_model (`nn.Module`): the compressed model (fake-quantized; quantizers as they are, enabled or not).
        batches (iterable): what the models are fed, as calibration loaders are: dicts of tensors (keys the
            forward does not take, and ``labels``, are dropped), ``(input, target)`` tuples, or tensors; an
            [`InitializingDataLoader`] uses its own ``get_inputs``. A single dict or tensor is one batch.
        local (`bool`, *optional*, defaults to `True`): also compute each layer's local SQNR (its QAT version fed
            the float layer's input; one extra layer call per layer call).
        max_batches (`int`, *optional*): stop after this many batches.

    Returns:
        [`LayerReport`]: one row per quantized layer that ran, in network order.

    Raises:
        `ValueError`: ``fp32_model`` is ``qat_model`` or holds quantized layers; the models do not match (a
            quantized layer's path is missing from ``fp32_model``, or holds another class or weight shape); they
            call a layer a different number of times or its outputs differ in shape; ``qat_model`` has no
            quantized layer; ``batches`` is empty; or a batch cannot be fed to a model.
    """
    fp32_model, qat_model = _unwrap(fp32_model), _unwrap(qat_model)
    pairs = _match_layers(fp32_model, qat_model)
    loader = batches if isinstance(batches, InitializingDataLoader) else InitializingDataLoader(_as_batches(batches))
    scopes = _scopes(qat_model)
    acc: dict[str, _Accumulator] = {}
    order: dict[str, None] = {}
    num_batches = num_samples = 0
    with _eval_no_grad(fp32_model), _eval_no_grad(qat_model), _same_attention(fp32_model, qat_model):
        for batch in loader:
            if max_batches is not None and num_batches >= max_batches:
                break
            args, kwargs = loader.get_inputs(batch)
            outputs = _run_float(fp32_model, pairs, args, kwargs, num_batches, acc, order, local)
            _run_qat(qat_model, pairs, args, kwargs, num_batches, acc, outputs)
            num_batches += 1
            num_samples += batch_size_of(args, kwargs)
    if num_batches == 0:
        raise ValueError("batches is empty: the report needs at least one batch to run both models on.")
    rows = []
    for path in order:
        qat_layer = pairs[path][1]
        a = acc[path]
        wq = qat_layer.weight_quantizer
        iq = qat_layer.__dict__.get("_hf_qat_input_quantizer")
        rows.append(
            LayerSQNR(
                scope=scopes[path],
                path=path,
                layer_type=type(qat_layer)._hf_qat_original_class.__name__,
                weight_bits=None if wq is None else wq.num_bits,
                input_bits=None if iq is None else iq.num_bits,
                sqnr_db=_sqnr_db(a.signal, a.noise),
                local_sqnr_db=_sqnr_db(a.signal, a.local_noise) if local else None,
            )
        )
    return LayerReport(tuple(rows), num_batches, num_samples, tuple(p for p in pairs if p not in order))


# -- matching the two models ------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def _match_layers(fp32_model: nn.Module, qat_model: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
    """``{path: (float layer, quantized layer)}`` for every quantized layer of ``qat_model``."""
    if fp32_model is qat_model:
        raise ValueError(
            "fp32_model is qat_model: create_compressed_model quantizes the model in place, so pass a float copy made "
            "before it (fp32_model = copy.deepcopy(model)) or the base model loaded again."
        )
    quantized = [path for path, m in fp32_model.named_modules() if is_wrapped(m)]
    if quantized:
        raise ValueError(
            f"fp32_model holds {len(quantized)} quantized layer(s) (first: {quantized[0]!r}): expected the float model "
            "qat_model was compressed from, e.g. copy.deepcopy(model) before create_compressed_model."
        )
    pairs: dict[str, tuple[nn.Module, nn.Module]] = {}
    problems: list[str] = []
    layers = [(path, m) for path, m in qat_model.named_modules() if is_wrapped(m)]
    if not layers:
        raise ValueError(
            f"qat_model ({type(qat_model).__name__}) has no quantized layer: expected the model create_compressed_model "
            "returned (ctrl.strip() restores the float layer classes, so pass the model before stripping it)."
        )
    for path, q in layers:
        original = type(q)._hf_qat_original_class
        try:
            f = fp32_model.get_submodule(path)
        except AttributeError:
            problems.append(f"{path!r} ({original.__name__}) is not in fp32_model")
            continue
        if type(f) is not original:
            problems.append(f"{path!r} is a {type(f).__name__} in fp32_model, a {original.__name__} in qat_model")
        elif tuple(f.weight.shape) != tuple(q.weight.shape):
            problems.append(f"{path!r}: weight shape {list(f.weight.shape)} in fp32_model, {list(q.weight.shape)} in qat_model")
        else:
            pairs[path] = (f, q)
    if problems:
        shown = "\n  - ".join(problems[:10])
        raise ValueError(
            f"fp32_model ({type(fp32_model).__name__}) does not match qat_model ({type(qat_model).__name__}): "
            f"{len(problems)} of {len(layers)} quantized layers differ:\n  - {shown}\n"
            "Expected the float model qat_model was compressed from (same architecture and module paths)."
        )
    return pairs


def _scopes(model: nn.Module) -> dict[str, str]:
    """NNCF scope of every module by path: ``Root/Child[attr]/...`` with NNCF's class names (as the tracer names them)."""
    modules = dict(model.named_modules())
    scopes = {"": nncf_class_name(model)}
    for path, module in modules.items():
        if path:
            parent, _, attr = path.rpartition(".")
            scopes[path] = f"{scopes[parent]}/{nncf_class_name(module)}[{attr}]"
    return scopes


# -- running ------------------------------------------------------------------------------------------------------


class _Accumulator:
    __slots__ = ("signal", "noise", "local_noise")

    def __init__(self, device: torch.device):
        self.signal = torch.zeros((), dtype=torch.float64, device=device)
        self.noise = torch.zeros((), dtype=torch.float64, device=device)
        self.local_noise = torch.zeros((), dtype=torch.float64, device=device)


def _squared_error(reference: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    diff = actual.to(reference.device, torch.float32) - reference.float()
    return torch.sum(diff * diff, dtype=torch.float64)


def _check_output(output: Any, path: str, which: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"layer {path!r} of {which} returned a {type(output).__name__}, expected a tensor.")
    return output


def _call(model: nn.Module, args: tuple, kwargs: dict, which: str, index: int) -> None:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    call_args, call_kwargs = _to_device(args, device), _to_device(filter_kwargs(model, kwargs), device)
    try:
        model(*call_args, **call_kwargs)
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ValueError(
            f"Batch {index} (args {[type(a).__name__ for a in args]}, keyword args {sorted(kwargs)}) could not be fed "
            f"to {which} ({type(model).__name__}): {type(e).__name__}: {e}"
        ) from e


def _run_float(
    model: nn.Module,
    pairs: dict[str, tuple[nn.Module, nn.Module]],
    args: tuple,
    kwargs: dict,
    index: int,
    acc: dict[str, _Accumulator],
    order: dict[str, None],
    local: bool,
) -> dict[str, list[torch.Tensor]]:
    """Run the float model; returns each layer's outputs (copies, in call order) and accumulates the local error."""
    outputs: dict[str, list[torch.Tensor]] = {}

    def hook(path: str, qat_layer: nn.Module):
        def capture(module: nn.Module, inputs: tuple, kw: dict, output: Any) -> None:
            out = _check_output(output, path, "fp32_model")
            # a copy: the next operation may work in place on the layer's output (ReLU(inplace=True))
            outputs.setdefault(path, []).append(out.detach().clone())
            order.setdefault(path, None)
            a = acc.get(path)
            if a is None:
                a = acc[path] = _Accumulator(out.device)
            a.signal += torch.sum(out.float() * out.float(), dtype=torch.float64)
            if local:
                device = qat_layer.weight.device
                mine = qat_layer(*_to_device(inputs, device), **_to_device(kw, device))
                a.local_noise += _squared_error(out, _check_output(mine, path, "qat_model"))

        return capture

    handles = [f.register_forward_hook(hook(path, q), with_kwargs=True) for path, (f, q) in pairs.items()]
    try:
        _call(model, args, kwargs, "fp32_model", index)
    finally:
        for h in handles:
            h.remove()
    return outputs


def _run_qat(
    model: nn.Module,
    pairs: dict[str, tuple[nn.Module, nn.Module]],
    args: tuple,
    kwargs: dict,
    index: int,
    acc: dict[str, _Accumulator],
    outputs: dict[str, list[torch.Tensor]],
) -> None:
    """Run the QAT model and accumulate each layer's error against the float outputs of the same batch."""
    calls: dict[str, int] = {}

    def hook(path: str):
        def compare(module: nn.Module, inputs: tuple, output: Any) -> None:
            out = _check_output(output, path, "qat_model")
            k = calls.get(path, 0)
            calls[path] = k + 1
            reference = outputs.get(path, [])
            if k >= len(reference):
                raise ValueError(
                    f"layer {path!r} ran more often in qat_model than in fp32_model on batch {index} "
                    f"(call {k + 1}, fp32_model: {len(reference)}): the models do not compute the same network."
                )
            fp = reference[k]
            if tuple(fp.shape) != tuple(out.shape):
                raise ValueError(
                    f"layer {path!r} output shape {list(out.shape)} in qat_model, {list(fp.shape)} in fp32_model "
                    f"(batch {index}, call {k + 1}): the models do not compute the same network."
                )
            acc[path].noise += _squared_error(fp, out)
            reference[k] = None  # type: ignore[call-overload]  # free it

        return compare

    handles = [q.register_forward_hook(hook(path)) for path, (_, q) in pairs.items()]
    try:
        _call(model, args, kwargs, "qat_model", index)
    finally:
        for h in handles:
            h.remove()
    for path, reference in outputs.items():
        if calls.get(path, 0) != len(reference):
            raise ValueError(
                f"layer {path!r} ran {len(reference)} time(s) in fp32_model and {calls.get(path, 0)} in qat_model on "
                f"batch {index}: the models do not compute the same network."
            )


def _as_batches(batches: Any) -> Iterable[Any]:
    if isinstance(batches, (Mapping, torch.Tensor)):
        return [batches]
    return batches


@contextlib.contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _same_attention(fp32_model: nn.Module, qat_model: nn.Module) -> Iterator[None]:
    """transformers models: the float model runs with the QAT model's attention implementation while the block runs."""
    wanted = getattr(getattr(qat_model, "config", None), "_attn_implementation", None)
    current = getattr(getattr(fp32_model, "config", None), "_attn_implementation", None)
    if wanted is None or current is None or wanted == current or not hasattr(fp32_model, "set_attn_implementation"):
        yield
        return
    fp32_model.set_attn_implementation(wanted)
    try:
        yield
    finally:
        fp32_model.set_attn_implementation(current)


# -- numbers --------------------------------------------------------------------------------------------------------


def _sqnr_db(signal: torch.Tensor, noise: torch.Tensor) -> float:
    s, e = float(signal), float(noise)
    if math.isnan(e) or math.isnan(s):
        return math.nan
    if e == 0.0:
        return math.inf
    if s == 0.0:
        return -math.inf
    return 10.0 * math.log10(s / e)


def _badness(value: float | None) -> tuple[int, float]:
    """Sort key, worst first: NaN, then ascending values, then ``None`` (not computed)."""
    if value is None:
        return (2, 0.0)
    if math.isnan(value):
        return (0, 0.0)
    return (1, value)


def _json_float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _fmt_db(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if math.isfinite(value) else str(_json_float(value))
