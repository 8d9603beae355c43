"""Pooling with the position mean/max pooling left out (the attention sink), rebuilt from a stored sink.

Its own module (numpy only) so that readers of activation files do not depend on the extraction code.
"""

from __future__ import annotations

import numpy as np


def with_sink(pooled: np.ndarray, sink: np.ndarray, n_tokens: np.ndarray, pooling: str) -> np.ndarray:
    """Rebuild pooling *with* the left-out position from a file written with ``keep_sink``.

    pooled, sink [prompt, ...]; n_tokens [prompt] (tokens after truncation). mean: ``((n - 1) pooled
    + sink) / n``; max: ``max(pooled, sink)``; rows whose sink is NaN (nothing left out) unchanged.
    Equals extraction with ``exclude="none"`` up to float32 rounding.
    """
    if pooling not in ("mean", "max"):
        raise ValueError(f"only mean and max pooling leave a position out, not {pooling!r}")
    pooled = np.asarray(pooled, dtype=np.float64)
    sink = np.asarray(sink, dtype=np.float64)
    n = np.asarray(n_tokens, dtype=np.float64).reshape(-1, *([1] * (pooled.ndim - 1)))
    rebuilt = ((n - 1) * pooled + sink) / n if pooling == "mean" else np.maximum(pooled, sink)
    return np.where(np.isnan(sink), pooled, rebuilt)
