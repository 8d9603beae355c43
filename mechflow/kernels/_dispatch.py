"""Backend selection for the fused kernels: ``"auto"``, ``"reference"`` or ``"triton"``.

* ``auto`` (default, or env ``MECHFLOW_KERNELS``): Triton on CUDA tensors when Triton is installed,
  the PyTorch reference otherwise (CPU tensors always get the reference, even with ``TRITON_INTERPRET=1``,
  so that the slow interpreter only runs where asked for).
* ``reference``: always the PyTorch reference.
* ``triton``: always the Triton kernels; on CPU tensors this needs ``TRITON_INTERPRET=1`` set before the
  kernels are first used (the interpreter), else a ``RuntimeError`` says so.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

BACKENDS = ("auto", "reference", "triton")


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    return name


_backend: str = _check(os.environ.get("MECHFLOW_KERNELS", "auto"))


def set_backend(name: str) -> None:
    """Set the process-wide kernel backend: ``"auto"``, ``"reference"`` or ``"triton"``."""
    global _backend
    _backend = _check(name)


def get_backend() -> str:
    """The current process-wide backend setting (not resolved for a device: see :func:`backend_for`)."""
    return _backend


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager that sets the backend inside the block and restores the previous one after."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def triton_available() -> bool:
    """True when the ``triton`` package is importable."""
    return importlib.util.find_spec("triton") is not None


def interpreter_active() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value (Triton kernels then run on CPU, slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no", "off")


def backend_for(tensor: torch.Tensor) -> str:
    """Resolve the backend (``"triton"`` or ``"reference"``) that a kernel call on ``tensor`` would use."""
    backend = get_backend()
    if backend == "reference":
        return "reference"
    if backend == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "reference"
    if not triton_available():
        raise RuntimeError("kernel backend 'triton' requested but the triton package is not installed")
    if tensor.is_cuda:
        return "triton"
    if tensor.device.type == "cpu" and interpreter_active():
        return "triton"
    raise RuntimeError(
        f"kernel backend 'triton' needs a CUDA tensor, or TRITON_INTERPRET=1 for CPU tensors; got a tensor on "
        f"{tensor.device} without the interpreter (use set_backend('auto') or 'reference' instead)"
    )
