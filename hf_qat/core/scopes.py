"""Scope patterns as NNCF defines them: an exact node name, or a regular expression after ``{re}``."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Sequence

__all__ = ["matches_any", "to_list", "nearest_names"]

_RE_PREFIX = "{re}"


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def matches_any(name: str, patterns: Iterable[str] | str | None) -> bool:
    """Whether ``name`` equals one of ``patterns`` or is found by one of its ``{re}`` expressions.

    Regular expressions are searched (``re.search``), as in NNCF: ``{re}.*NNCFEmbedding`` and
    ``{re}NNCFEmbedding`` both match ``Bert/.../NNCFEmbedding[word_embeddings]/embedding_0``.
    """
    if patterns is None:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns:
        if pattern.startswith(_RE_PREFIX):
            if _compiled(pattern[len(_RE_PREFIX) :]).search(name):
                return True
        elif name == pattern:
            return True
    return False


def to_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def nearest_names(pattern: str, names: Sequence[str], n: int = 5) -> list[str]:
    """Names of ``names`` closest to ``pattern`` (regular-expression prefix stripped), best first."""
    target = pattern[len(_RE_PREFIX) :] if pattern.startswith(_RE_PREFIX) else pattern
    target = target.replace("\\", "")
    close = difflib.get_close_matches(target, list(dict.fromkeys(names)), n=n, cutoff=0.0)
    return close
