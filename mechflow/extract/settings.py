"""How an extraction runs: :class:`ExtractSettings`, the pooling and exclude choices, and :class:`ExtractionError`.

The bottom layer of :mod:`mechflow.extract`: it imports nothing from mechflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

Pooling = Literal["mean", "max", "last"]
POOLINGS: tuple[str, ...] = ("mean", "max", "last")
#: which position mean/max pooling leaves out: ``auto`` is ``bos`` where the tokenizer adds a BOS
#: token, else ``first`` (SmolLM2 adds none: its first token is an attention sink, see README)
Exclude = Literal["auto", "bos", "first", "none"]
EXCLUDES: tuple[str, ...] = ("auto", "bos", "first", "none")


class ExtractionError(ValueError):
    """Extraction settings do not fit the model or prompts."""


@dataclass(frozen=True)
class ExtractSettings:
    """What one extraction captures and how it pools, as the rule ``extract`` (or ``extract_tokens``) runs it.

    ``hooks``: hook name -> ``"all"`` or layer indices (negative counts from the end), captured in one
    forward pass per batch; token-level extraction takes exactly one hook. ``pooling``: ``mean``,
    ``max`` or ``last`` (``None`` for token-level settings, which do not pool). ``exclude``: which
    position mean/max pooling leaves out (:func:`mechflow.extract.resolve_exclude`). ``keep_sink``:
    also store that position's activation (pooled files only). ``batch_size`` prompts per forward
    pass, each truncated to ``max_length`` tokens; ``window`` consecutive prompts are buffered and
    written as one block; ``progress`` shows a progress bar. Nothing is checked here: the extraction
    functions raise :class:`ExtractionError` where the settings do not fit the model or prompts.
    """

    hooks: Mapping[str, str | Sequence[int]]
    pooling: Pooling | None = "mean"
    exclude: Exclude = "auto"
    keep_sink: bool = False
    batch_size: int = 32
    max_length: int = 64
    window: int = 1024
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "hooks", MappingProxyType(dict(self.hooks)))  # frozen: a read-only copy

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> ExtractSettings:
        """Settings from a rule's canonical ``params.extract``: pooled (``hooks``: hook -> layers, ``pooling``,
        ``keep_sink``) or token level (``hook``, ``layers``); both carry ``exclude``, ``batch_size`` and
        ``max_length``. ``overrides``: other fields (``window``, ``progress``)."""
        if "hooks" in params:
            hooks, pooled = dict(params["hooks"]), {"pooling": params["pooling"], "keep_sink": params["keep_sink"]}
        else:
            hooks, pooled = {params["hook"]: params["layers"]}, {"pooling": None}
        return cls(hooks, exclude=params["exclude"], batch_size=params["batch_size"], max_length=params["max_length"],
                   **pooled, **overrides)

    @property
    def hook(self) -> str:
        """The one hook of token-level settings."""
        if len(self.hooks) != 1:
            raise ExtractionError(f"one hook expected, got {sorted(self.hooks)}")
        return next(iter(self.hooks))
