"""Operations that have other names in today's traces than in the traces NNCF configs were written against.

NNCF configs name operations by their traced node names (``.../GPT2Attention[attn]/__truediv___0``). Two things
change those names for a config that was right when it was written:

- transformers rewrote some computations: attention scores of GPT-2, BERT, RoBERTa, DistilBERT and MobileBERT
  were divided by ``sqrt(head_dim)`` (``__truediv___0``) and are now multiplied by its inverse (``__mul___0``,
  checked to be the only ``__mul__`` of those attention modules in transformers 5);
- hf_qat runs attention eagerly, so ``scaled_dot_product_attention_<k>`` (what NNCF traced under
  transformers' SDPA attention; optimum-intel's OVTrainer default config names it) is computed by two
  products, ``matmul_<2k>`` (``Q K^T``) and ``matmul_<2k+1>`` (``P V``), whose inputs are exactly the inputs
  (and attention probabilities) hf_qat quantizes for SDPA.

:data:`OP_RENAMES` lists them. A scope that matches no operation is translated only when one entry applies,
the translated scope matches operations, and every operation it matches lies in a module of the entry's
class (``GPT2Attention``): exact translations only, anything else stays a ``ScopeError``. Each translation is
reported (a warning naming the old and the new scope).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .scopes import matches_any

__all__ = ["OpRename", "OP_RENAMES", "translate_scope"]

_RE_PREFIX = "{re}"


@dataclass(frozen=True)
class OpRename:
    """In modules whose class matches ``module_class``, the operation ``old`` (a regex over ``<op>_<index>``)
    is now the operation(s) ``new_names(match)``; ``reason`` says why."""

    module_class: str
    old: str
    new_names: Callable[[re.Match], list[str]]
    reason: str


def _sdpa(m: re.Match) -> list[str]:
    k = int(m.group(1))
    return [f"matmul_{2 * k}", f"matmul_{2 * k + 1}"]


#: The known renames (see the module docstring).
OP_RENAMES: tuple[OpRename, ...] = (
    OpRename(
        r"GPT2Attention|BertSelfAttention|RobertaSelfAttention|DistilBertSelfAttention|MobileBertSelfAttention",
        r"__truediv___0",
        lambda m: ["__mul___0"],
        "transformers 5 scales attention scores by multiplying with 1/sqrt(head_dim) (its eager_attention_forward) "
        "instead of dividing; in GPT-2, BERT, RoBERTa, DistilBERT and MobileBERT attention that is the module's only "
        "__mul__",
    ),
    OpRename(
        r"\w+",
        r"scaled_dot_product_attention_(\d+)",
        _sdpa,
        "hf_qat computes attention eagerly: scaled_dot_product_attention_<k> is matmul_<2k> (Q K^T) and matmul_<2k+1> (P V)",
    ),
)

_OP_TOKEN = re.compile(r"(?<!\w)(?P<op>[A-Za-z_]\w*?_\d+)(?=$|[^\w])")


def _module_class(node_name: str) -> str:
    """Class of the innermost named module of a node name (``GPT2Attention`` in ``.../GPT2Attention[attn]/__mul___0``)."""
    parts = node_name.split("/")
    for comp in reversed(parts[:-1]):
        m = re.match(r"^([^\[\]]+)\[", comp)
        if m:
            return m.group(1)
    return parts[0]


def translate_scope(pattern: str, names: Sequence[str]) -> tuple[str, OpRename] | None:
    """The translation of a scope that matches none of ``names``, or ``None`` when there is no exact one.

    Returns ``(new_pattern, rename)``; ``new_pattern`` is a ``{re}`` pattern.
    """
    is_regex = pattern.startswith(_RE_PREFIX)
    body = pattern[len(_RE_PREFIX) :] if is_regex else pattern
    candidates = []
    for rename in OP_RENAMES:
        old = re.compile(rename.old)
        tokens = [t for t in _OP_TOKEN.finditer(body) if old.fullmatch(t.group("op"))]
        if len(tokens) != 1:
            continue
        token = tokens[0]
        new = rename.new_names(old.fullmatch(token.group("op")))
        replacement = "(?:" + "|".join(new) + ")"
        before, after = body[: token.start()], body[token.end() :]
        if is_regex:
            translated = _RE_PREFIX + before + replacement + after
        else:  # an exact name stays exact
            translated = _RE_PREFIX + "^" + re.escape(before) + replacement + re.escape(after) + "$"
        matched = [n for n in names if matches_any(n, [translated])]
        if not matched or not all(re.fullmatch(rename.module_class, _module_class(n)) for n in matched):
            continue
        candidates.append((translated, rename))
    return candidates[0] if len(candidates) == 1 else None
