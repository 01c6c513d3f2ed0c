"""Entity-level precision, recall and F1 of IOB/IOB2 tag sequences (the hub's ``seqeval`` API, strict spans)."""

import datasets
import evaluate

_DESCRIPTION = "Entity-level scores of sequence labelling: an entity counts when its type and span both match."
_KWARGS = """
Args:
    predictions (`list[list[str]]`): predicted tags per sentence (``B-PER``, ``I-PER``, ``O`` ...).
    references (`list[list[str]]`): reference tags per sentence.
Returns:
    overall_precision, overall_recall, overall_f1, overall_accuracy (`float`), and per entity type
    a dict with precision, recall, f1 and number.
"""


def _spans(tags):
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-") if tag != "O" else ("O", "", "")
        ends = start is not None and (prefix in ("O", "B") or label != kind)
        if ends:
            spans.add((kind, start, i))
            start, kind = None, None
        if prefix in ("B", "I") and start is None:
            start, kind = i, label
    return spans


class Seqeval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references):
        per_type = {}
        correct_tags = total_tags = 0
        for pred, ref in zip(predictions, references):
            correct_tags += sum(p == r for p, r in zip(pred, ref))
            total_tags += len(ref)
            ps, rs = _spans(pred), _spans(ref)
            for kind in {k for k, _, _ in ps | rs}:
                d = per_type.setdefault(kind, [0, 0, 0])
                d[0] += len({s for s in ps & rs if s[0] == kind})
                d[1] += len({s for s in ps if s[0] == kind})
                d[2] += len({s for s in rs if s[0] == kind})

        def scores(tp, npred, nref):
            p = tp / npred if npred else 0.0
            r = tp / nref if nref else 0.0
            return p, r, (2 * p * r / (p + r) if p + r else 0.0)

        out = {}
        for kind, (tp, npred, nref) in sorted(per_type.items()):
            p, r, f = scores(tp, npred, nref)
            out[kind] = {"precision": p, "recall": r, "f1": f, "number": nref}
        tp, npred, nref = (sum(v[i] for v in per_type.values()) for i in range(3))
        p, r, f = scores(tp, npred, nref)
        out.update(
            overall_precision=p, overall_recall=r, overall_f1=f, overall_accuracy=correct_tags / total_tags if total_tags else 0.0
        )
        return out
