"""Lazy re-exports for a package's ``__init__`` (PEP 562): a public name imports its submodule on first use.

A package whose submodules load torch re-exports their names this way, so that importing the package
(or a torch-free submodule of it, such as a run config the workflow validates a study with) does not
load torch::

    _EXPORTS = {"train": "train", "validate_run": "config"}  # public name -> submodule that defines it
    __all__ = sorted(_EXPORTS)
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

Code whose digest matters (rule scripts: :func:`mechflow.workflow.script_code_digest` follows import
statements) imports from the submodules.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package`` whose names ``exports`` (name -> submodule)
    are imported from their submodules when first used."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
