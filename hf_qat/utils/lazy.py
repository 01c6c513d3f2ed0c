"""Lazy attribute loading for packages (huggingface_hub's ``_SUBMOD_ATTRS`` pattern).

A package lists which submodule defines each public name; the submodule is imported when the name is
first read, so importing the package costs nothing and works whichever framework is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["attach"]


def attach(package: str, submod_attrs: dict[str, list[str]]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` loading ``submod_attrs`` (``{submodule: [names]}``) on demand.

    A name whose submodule needs a framework that is not installed raises that submodule's import
    error (a [`MissingDependencyError`] naming the extra), not ``AttributeError``.
    """
    owner = {name: sub for sub, names in submod_attrs.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in owner:
            module = importlib.import_module(f"{package}.{owner[name]}")
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(owner)

    return __getattr__, __dir__
