"""Which torch device a step runs on: one rule for every step that takes a ``device`` setting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: the pattern of a ``device`` setting in a study (``auto``, ``cpu``, ``cuda`` or ``cuda:N``)
DEVICE_PATTERN = "^(auto|cpu|cuda(:[0-9]+)?)$"


def resolve_device(device: Any = "auto", error: type[Exception] = ValueError, what: str = "") -> torch.device:
    """``auto`` (or None) -> ``cuda`` when torch sees a GPU, else ``cpu``; any other device as given.

    Returns a ``torch.device``. Raises ``error`` when a CUDA device is asked for and torch sees none
    (``what`` names who asked, e.g. ``"sae run"``).
    """
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{what + ' ' if what else ''}asks for device {str(device)!r} but torch sees no CUDA device")
    return dev


def cuda_device_count() -> int:
    """CUDA devices torch sees (0 without CUDA); imports torch, so call it only when a study names a CUDA device."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
