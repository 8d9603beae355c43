"""The lens's error, in a module of its own so that checking a study's lens settings does not load torch."""

from __future__ import annotations

__all__ = ["LensError"]


class LensError(ValueError):
    """A model, prompt set or target set that the lens cannot read."""
