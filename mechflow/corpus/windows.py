"""Documents cut into fixed-length token windows, split into train and held-out by document.

Token ids are numpy int32 throughout (no torch); the tokenizer is any Hugging Face tokenizer (called on a
batch of texts, ``input_ids`` read back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mechflow.corpus.sources import CorpusError, Document

__all__ = ["PAD", "SPLITS", "build_windows", "held_out_documents", "real_tokens", "windows_of"]

log = logging.getLogger("mechflow.corpus")

PAD = -1
SPLITS = ("train", "held_out")
_BATCH_DOCUMENTS = 256
_BATCH_CHARS = 1 << 20


def _batches(documents: Iterable[Document]) -> Iterator[list[Document]]:
    """Documents in groups of at most 256 documents or about 1 M characters (one tokenizer call each)."""
    batch: list[Document] = []
    chars = 0
    for doc in documents:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= _BATCH_DOCUMENTS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _cut(ids: np.ndarray, context_size: int, bos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One document's ids (without its BOS) -> windows [n, context_size] (BOS first when ``bos`` is set, -1
    padding) and their real lengths [n]; a last partial window shorter than 2 tokens is dropped."""
    head = 0 if bos is None else 1
    step = context_size - head
    full, rest = divmod(len(ids), step)
    out = np.full((full + (rest > 0), context_size), PAD, dtype=np.int32)
    out[:full, head:] = ids[:full * step].reshape(full, step)
    out[full:, head:head + rest] = ids[full * step:]
    if bos is not None:
        out[:, 0] = bos
    length = np.full(len(out), context_size, dtype=np.int32)
    if rest:
        length[-1] = head + rest
        if length[-1] < 2:
            out, length = out[:-1], length[:-1]
    return out, length


def held_out_documents(n_documents: int, held_out: float, seed: int) -> np.ndarray:
    """Which documents are held out [n_documents] bool: ``round(held_out * n)`` drawn by a seeded permutation, at
    least one and at most ``n - 1`` when ``held_out > 0`` and there are at least 2 documents."""
    n_held = 0
    if held_out > 0 and n_documents >= 2:
        n_held = min(max(int(np.floor(held_out * n_documents + 0.5)), 1), n_documents - 1)
    held = np.zeros(n_documents, dtype=bool)
    held[np.random.default_rng(seed).permutation(n_documents)[:n_held]] = True
    return held


def build_windows(documents: Iterable[Document], tokenizer: Any, context_size: int, held_out: float, seed: int,
                  max_tokens: int | None = None) -> xr.Dataset:
    """Tokenise each document (no truncation, the tokenizer's default special tokens) and cut it into consecutive
    windows of ``context_size`` tokens that never cross documents.

    When the tokenizer prepends a BOS, each window is ``[BOS] + the next context_size - 1 tokens``; otherwise
    ``context_size`` tokens. A last partial window is kept when it has at least 2 tokens (padded with -1).
    Documents that give no window are left out (and not in ``document_id``). ``max_tokens``: documents are read
    in order and whole windows kept while the real tokens (``length``, BOS included) stay within it. Held-out
    documents: :func:`held_out_documents` over the documents kept. The dataset is described in
    :mod:`mechflow.corpus`.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2, got {context_size}")
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out must be in [0, 1), got {held_out}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
    from mechflow.extract.pooling import adds_bos  # torch, as the tokenizer's transformers has already loaded

    bos = int(tokenizer.bos_token_id) if adds_bos(tokenizer) else None
    started = time.perf_counter()
    chunks: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    doc_ids: list[str] = []
    total, full = 0, False
    for batch in _batches(documents):
        encoded = tokenizer([d.text for d in batch], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        for doc, ids in zip(batch, encoded):
            ids = np.asarray(ids, dtype=np.int64)
            if bos is not None and len(ids) and ids[0] == bos:
                ids = ids[1:]
            windows, length = _cut(ids.astype(np.int32), context_size, bos)
            if max_tokens is not None:
                fits = int(np.searchsorted(np.cumsum(length, dtype=np.int64), max_tokens - total, side="right"))
                full = fits < len(length)
                windows, length = windows[:fits], length[:fits]
            if len(length):
                chunks.append(windows)
                lengths.append(length)
                doc_ids.append(doc.id)
                total += int(length.sum())
            if full:
                break
        if full:
            break
    if not chunks:
        raise CorpusError("no document gives a window of at least 2 tokens"
                          + (f" within max_tokens={max_tokens}" if max_tokens is not None else ""))
    length = np.concatenate(lengths)
    document = np.repeat(np.arange(len(doc_ids), dtype=np.int32), [len(c) for c in lengths])
    held = held_out_documents(len(doc_ids), held_out, seed)[document]
    ds = xr.Dataset(
        {"tokens": (("window", "position"), np.concatenate(chunks)), "length": ("window", length)},
        coords={"document": ("window", document), "split": ("window", np.where(held, SPLITS[1], SPLITS[0])),
                "document_id": ("doc", np.array(doc_ids, dtype=str))},
        attrs={"context_size": int(context_size), "prepend_bos": int(bos is not None), "held_out": float(held_out),
               "seed": int(seed), "n_documents": len(doc_ids),
               "n_held_out_documents": int(np.unique(document[held]).size),
               "n_train_tokens": int(length[~held].sum()), "n_held_out_tokens": int(length[held].sum()),
               "sink_position": 0, "padding": PAD, "tokenizer": Path(str(getattr(tokenizer, "name_or_path", ""))).name})
    log.info("%d documents -> %d windows of %d tokens: %d train tokens, %d held-out tokens (%d documents), in %.1f s",
             len(doc_ids), len(length), context_size, ds.attrs["n_train_tokens"], ds.attrs["n_held_out_tokens"],
             ds.attrs["n_held_out_documents"], time.perf_counter() - started)
    return ds


def windows_of(ds: xr.Dataset, split: str) -> xr.Dataset:
    """The windows of one split (``train`` or ``held_out``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return ds.isel(window=np.flatnonzero(ds["split"].values == split))


def real_tokens(ds: xr.Dataset) -> int:
    """The real (non-padding) tokens of the windows, position 0 included."""
    return int(ds["length"].sum())
