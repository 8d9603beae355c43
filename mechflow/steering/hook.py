"""Add a vector to a model's activations at one hook point and layer, through a forward hook that is always removed.

The hook point is one of :mod:`mechflow.hooks` (``resid``: the residual stream after block ``layer``;
``mlp_hidden``: the MLP's hidden activations, the down projection's input; ``attn_out``: the attention
output projection's output), so a steering vector is added exactly where the activations it was made
from were read: a difference of means or an SAE decoder row of the residual stream, a semi-NMF factor
in the MLP hidden space.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mechflow.extract import _base_model
from mechflow.hooks import capture_sites

__all__ = ["steering", "positions_from"]


def positions_from(mask: torch.Tensor, start: int) -> torch.Tensor:
    """Where to steer [batch, tokens] (bool): real tokens (``mask`` 1) at position ``start`` or later, counted
    from each prompt's first real token whatever the padding side (``start=0``: every real token)."""
    pos = mask.to(torch.int64).cumsum(1) - 1
    return mask.bool() & (pos >= start)


@contextlib.contextmanager
def steering(model: torch.nn.Module, hook: str, layer: int, vector: torch.Tensor,
             coef: float | torch.Tensor = 1.0, where: torch.Tensor | None = None) -> Iterator[None]:
    """Within the block, ``hook``'s activation at block ``layer`` is ``h + coef * where * vector``.

    ``vector`` [units]; ``coef`` a number or one per row [batch]; ``where`` [batch, tokens] bool (None:
    every position). A coefficient of 0 leaves every activation, hence the logits, exactly as they were.
    The hook is removed on exit, also when the body raises.
    """
    site = capture_sites(_base_model(model), hook)[layer]

    def add(h: torch.Tensor) -> torch.Tensor:
        c = torch.as_tensor(coef, dtype=h.dtype, device=h.device)
        c = c.reshape(-1, 1, 1) if c.ndim == 1 else c
        delta = c * vector.to(device=h.device, dtype=h.dtype)
        if where is not None:
            if where.shape != h.shape[:2]:
                raise ValueError(f"steering mask {tuple(where.shape)} does not fit the activations {tuple(h.shape[:2])}")
            delta = delta * where.to(device=h.device, dtype=h.dtype).unsqueeze(-1)
        return h + delta

    if site.what == "output":
        def on_output(module, args, out):
            return (add(out[0]), *out[1:]) if isinstance(out, tuple) else add(out)

        handle = site.module.register_forward_hook(on_output)
    else:
        def on_input(module, args, kwargs):
            if args:
                return (add(args[0]), *args[1:]), kwargs
            key = next(iter(kwargs))  # a module called with keywords only: its first input
            return args, {**kwargs, key: add(kwargs[key])}

        handle = site.module.register_forward_pre_hook(on_input, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
