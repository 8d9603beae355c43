"""Top corpus contexts of an SAE trained on a text corpus: windows of the corpus's held-out split (never trained on),
ranked per feature by their largest token activation.

The input is the held-out token-activation shards of the SAE's corpus at its hook and layer
(:mod:`mechflow.corpus.activations`: rows in window order, then position order, every real token but the sink
position 0, coordinates ``window`` and ``position``) and the corpus's windows file (token ids, ``length``,
``document``). At most ``max_rows`` rows are read, spread over the shards (each shard's share in whole windows
from its start), in blocks of whole windows (about ``block_rows`` rows each) that the feature set's encoder turns
into feature activations [row, feature]. A running top-k per feature (:class:`TopWindows`) keeps the ``k`` windows
with the largest activation of each feature, with the position of that token and the values of the feature at the
``before`` tokens before it and ``after`` tokens after it: memory is one block and [k, feature, span], whatever the
number of rows read. Windows are distinct: a window's rows are always in one block.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mechflow.io import open_dataset

__all__ = ["HELD_OUT", "TopWindows", "CorpusContexts", "corpus_contexts", "read_plan", "window_blocks"]

#: the only split contexts are read from
HELD_OUT = "held_out"


def _round(a: np.ndarray, digits: int = 3) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(a, dtype=np.float64)]


class TopWindows:
    """The ``k`` windows with the largest activation of each of ``n_features`` features, over blocks of rows.

    State, [k, feature] (best first; ``value`` -inf and ``window`` -1 where fewer windows were seen): ``value`` (the
    window's largest activation of the feature), ``window`` (its index in the windows file), ``position`` (the
    position of that token in the window); ``span`` [k, feature, before + 1 + after] the feature's values at
    positions ``position - before .. position + after`` (NaN where the shard has no row: outside the window, or
    the sink position 0). Ties keep the window seen first.
    """

    def __init__(self, n_features: int, k: int, before: int, after: int):
        if k < 1 or before < 0 or after < 0:
            raise ValueError(f"k must be >= 1 and before, after >= 0, got k={k}, before={before}, after={after}")
        self.k, self.before, self.after = int(k), int(before), int(after)
        self.value = np.full((k, n_features), -np.inf, dtype=np.float32)
        self.window = np.full((k, n_features), -1, dtype=np.int64)
        self.position = np.zeros((k, n_features), dtype=np.int64)
        self.span = np.full((k, n_features, before + 1 + after), np.nan, dtype=np.float32)
        self.rows = 0
        self.positive = np.zeros(n_features, dtype=np.int64)

    def add(self, window: np.ndarray, position: np.ndarray, values: np.ndarray) -> None:
        """One block: ``window``, ``position`` [row] (whole windows, each window's rows contiguous and in position
        order, as a shard holds them) and the feature activations ``values`` [row, feature]."""
        window = np.asarray(window, dtype=np.int64)
        position = np.asarray(position, dtype=np.int64)
        values = np.asarray(values, dtype=np.float32)
        n, n_features = values.shape
        if n == 0:
            return
        if n_features != self.value.shape[1] or window.shape != (n,) or position.shape != (n,):
            raise ValueError(f"a block of {n} rows needs window and position [{n}] and values [{n}, "
                             f"{self.value.shape[1]}], got {window.shape}, {position.shape}, {values.shape}")
        starts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])
        ends = np.r_[starts[1:], n]
        if np.unique(window[starts]).size != starts.size:
            raise ValueError("a window's rows must be contiguous in a block")
        self.rows += n
        self.positive += (values > 0).sum(axis=0)
        lengths = ends - starts
        if (lengths == lengths[0]).all():  # full windows: one reshape
            best = values.reshape(starts.size, int(lengths[0]), n_features).max(axis=1)
        else:
            best = np.maximum.reduceat(values, starts, axis=0)                  # [block window, feature]
        k = self.k
        order = np.argsort(-np.concatenate([self.value, best]), axis=0, kind="stable")[:k]   # [k, feature]
        feat = np.broadcast_to(np.arange(n_features), order.shape)
        old = order < k
        slot = np.where(old, order, 0)
        new_w = np.where(old, 0, order - k)                                       # block window of a new entry
        value = np.where(old, self.value[slot, feat], best[new_w, feat])
        win = np.where(old, self.window[slot, feat], window[starts][new_w])
        pos = self.position[slot, feat]
        span = self.span[slot, feat]                                              # [k, feature, span] (a copy)
        fresh = np.flatnonzero(~old.ravel())
        if fresh.size:
            w, f = new_w.ravel()[fresh], feat.ravel()[fresh]
            offsets = np.arange(int(lengths[w].max()))
            rows = starts[w][:, None] + offsets[None, :]                          # [entry, longest window]
            inside = offsets[None, :] < lengths[w][:, None]
            vals = np.where(inside, values[np.minimum(rows, n - 1), f[:, None]], -np.inf)
            top_row = starts[w] + vals.argmax(axis=1)                             # the first row of the largest value
            p = position[top_row]
            wanted = p[:, None] + np.arange(-self.before, self.after + 1)[None, :]
            span_rows = starts[w][:, None] + wanted - position[starts[w]][:, None]
            ok = (span_rows >= starts[w][:, None]) & (span_rows < ends[w][:, None])
            got = np.where(ok, values[np.clip(span_rows, 0, n - 1), f[:, None]], np.nan)
            np.put(pos, fresh, p)
            span[fresh // n_features, fresh % n_features] = got
        self.value, self.window, self.position, self.span = value.astype(np.float32), win, pos, span


@dataclass
class CorpusContexts:
    """Per feature its top held-out windows (dicts: window, document, position, tokens, values, excluded, max; only
    windows where the feature is > 0), its density over the rows read, and what was read (``info``)."""

    contexts: list[list[dict]]
    density: np.ndarray
    info: dict = field(default_factory=dict)


def _window_ends(window: np.ndarray) -> np.ndarray:
    """Row index after each window of a shard (rows in window order)."""
    if window.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.r_[np.flatnonzero(window[1:] != window[:-1]) + 1, window.size].astype(np.int64)


def read_plan(sizes: Sequence[int], max_rows: int | None) -> list[int]:
    """Rows to read from each of shards of ``sizes`` rows: everything under ``max_rows`` (None: no cap), else an
    equal share of what is left for each shard in turn (a small shard's unused share passes to the next)."""
    if max_rows is None:
        return [int(s) for s in sizes]
    out, left = [], int(max_rows)
    for i, s in enumerate(sizes):
        take = min(int(s), left // (len(sizes) - i))
        out.append(take)
        left -= take
    return out


def window_blocks(ends: np.ndarray, limit: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """Row ranges [lo, hi) of whole windows (``ends``: row after each window) covering the windows that end at or
    before ``limit`` (at least the first window when ``limit`` > 0), about ``block_rows`` rows each (a longer
    window is one block)."""
    if limit <= 0 or ends.size == 0:
        return
    stop = int(ends[max(0, np.searchsorted(ends, limit, side="right") - 1)])
    lo = 0
    while lo < stop:
        i = np.searchsorted(ends, min(lo + block_rows, stop), side="right") - 1
        hi = int(ends[i]) if i >= 0 and ends[i] > lo else int(ends[np.searchsorted(ends, lo, side="right")])
        yield lo, hi
        lo = hi


def corpus_contexts(shards: Sequence[str | Path], windows: str | Path, encode: Callable[[np.ndarray], np.ndarray],
                    n_features: int, decode: Callable[[Sequence[int]], list[str]], k: int = 10, max_rows: int | None = 50_000,
                    before: int = 12, after: int = 4, block_rows: int = 4096) -> CorpusContexts:
    """The top ``k`` held-out windows of each feature of a feature set with encoder ``encode`` (token activations
    [n, d_hook] -> [n, feature]) over the held-out ``shards`` (module docstring; ValueError for a shard of another
    split) and the ``windows`` file; ``decode``: token ids -> one string per token. Each context shows the window's
    tokens from ``before`` tokens before its largest activation to ``after`` after it, each with the feature's value
    (position 0, the sink the shards leave out, listed in ``excluded``)."""
    t0 = time.perf_counter()
    sizes, attrs = [], {}
    for path in shards:
        with open_dataset(path) as ds:
            split = str(ds.attrs.get("split", ""))
            if split != HELD_OUT:
                raise ValueError(f"{path}: corpus contexts come from held-out windows only, this shard is split {split!r}")
            sizes.append(int(ds.sizes["token"]))
            attrs = attrs or dict(ds.attrs)
    top = TopWindows(n_features, k, before, after)
    used = 0
    for path, quota in zip(shards, read_plan(sizes, max_rows)):
        if quota <= 0:
            continue
        with open_dataset(path) as ds:
            window = np.asarray(ds["window"].values, dtype=np.int64)
            position = np.asarray(ds["position"].values, dtype=np.int64)
            acts = ds["activations"]
            read = 0
            for lo, hi in window_blocks(_window_ends(window), quota, block_rows):
                x = np.asarray(acts[lo:hi].values, dtype=np.float32)
                top.add(window[lo:hi], position[lo:hi], encode(x))
                read = hi
            used += read > 0
    contexts = _contexts(top, windows, decode)
    density = top.positive / max(top.rows, 1)
    info = {"rows": int(top.rows), "windows": int(len({w for fc in contexts for w in (c["window"] for c in fc)})),
            "shards_read": int(used), "shards": len(shards), "held_out_rows": int(sum(sizes)),
            "corpus": str(attrs.get("corpus", attrs.get("dataset", ""))), "seconds": time.perf_counter() - t0}
    return CorpusContexts(contexts, density, info)


def _contexts(top: TopWindows, windows_path: str | Path, decode: Callable[[Sequence[int]], list[str]]) -> list[list[dict]]:
    """The kept windows as page contexts: tokens decoded from the windows file, values from the spans."""
    n_features = top.value.shape[1]
    keep = top.value > 0
    wanted = np.unique(top.window[keep])
    with open_dataset(windows_path) as ds:
        if wanted.size:
            sel = ds.isel(window=wanted)
            ids = np.asarray(sel["tokens"].values, dtype=np.int64)
            length = np.asarray(sel["length"].values, dtype=np.int64)
            split = np.asarray(sel["split"].values).astype(str)
            doc = np.asarray(sel["document"].values, dtype=np.int64) if "document" in sel.coords else np.full(wanted.size, -1)
            names = np.asarray(ds["document_id"].values).astype(str) if "document_id" in ds.variables else None
        else:
            ids = np.zeros((0, 1), dtype=np.int64)
            length = doc = np.zeros(0, dtype=np.int64)
            split = np.zeros(0, dtype=str)
            names = None
    if (split != HELD_OUT).any():
        raise ValueError(f"windows {wanted[split != HELD_OUT][:5].tolist()} of {windows_path} are not held out: "
                         "the shards and the windows file disagree")
    vocab = np.unique(ids[ids >= 0])
    text = dict(zip(vocab.tolist(), decode(vocab.tolist())))
    row = {int(w): i for i, w in enumerate(wanted)}
    slot, feat = np.nonzero(keep)                        # slot-major: each feature's contexts stay best first
    spans = np.asarray(_round(np.nan_to_num(top.span[slot, feat], nan=0.0).ravel())).reshape(slot.size, -1)
    maxima = _round(top.value[slot, feat])
    out: list[list[dict]] = [[] for _ in range(n_features)]
    for e, (j, f) in enumerate(zip(slot, feat)):
        i, p = row[int(top.window[j, f])], int(top.position[j, f])
        lo, hi = max(0, p - top.before), min(int(length[i]), p + top.after + 1)
        a = lo - (p - top.before)
        out[f].append({"window": int(wanted[i]),
                       "document": str(names[doc[i]]) if names is not None and doc[i] >= 0 else str(int(doc[i])),
                       "position": p, "tokens": [text[int(t)] for t in ids[i, lo:hi]],
                       "values": spans[e, a:a + hi - lo].tolist(), "excluded": [0] if lo == 0 else [], "max": maxima[e]})
    return out
