"""F1 score of binary or multi-class predictions (same API as the hub's ``f1``)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall)."
_KWARGS = """
Args:
    predictions (`list[int]`): predicted labels.
    references (`list[int]`): ground-truth labels.
    pos_label (`int`): the positive class for ``average="binary"`` (default 1).
    average (`str`): ``"binary"`` (default), ``"macro"``, ``"micro"`` or ``"weighted"``.
Returns:
    f1 (`float`)
"""


def _f1(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, pos_label=1, average="binary"):
        p, r = np.asarray(predictions), np.asarray(references)
        if average == "binary":
            return {"f1": float(_f1(((p == pos_label) & (r == pos_label)).sum(), ((p == pos_label) & (r != pos_label)).sum(), ((p != pos_label) & (r == pos_label)).sum()))}
        labels = np.union1d(p, r)
        stats = [(((p == c) & (r == c)).sum(), ((p == c) & (r != c)).sum(), ((p != c) & (r == c)).sum()) for c in labels]
        if average == "micro":
            tp, fp, fn = (sum(s[i] for s in stats) for i in range(3))
            return {"f1": float(_f1(tp, fp, fn))}
        scores = np.array([_f1(*s) for s in stats])
        if average == "macro":
            return {"f1": float(scores.mean()) if len(scores) else 0.0}
        if average == "weighted":
            support = np.array([(r == c).sum() for c in labels], dtype=float)
            return {"f1": float((scores * support).sum() / support.sum()) if support.sum() else 0.0}
        raise ValueError(f"average must be 'binary', 'macro', 'micro' or 'weighted', got {average!r}")
