"""Capture activations at named hook points and pool them per prompt.

Prompts are tokenised in batches (sorted by length to limit padding), run through the model with
forward hooks on the chosen layers, pooled with the attention mask (mean, max or last token), and
streamed batch by batch into the output file, so memory stays bounded by one batch. One module per idea,
each importing only those above it in this list:

- :mod:`~mechflow.extract.settings`: :class:`ExtractSettings` (hooks and layers, pooling, exclude,
  keep_sink, batch size, max length; :meth:`ExtractSettings.from_params` reads a rule's
  ``params.extract``), the pooling / exclude choices and :class:`ExtractionError`;
- :mod:`~mechflow.extract.pooling`: pooling on tensors: the position left out (the attention sink),
  the pooling mask, mean / max / last, the sink's rows, per-position norms, layer selection;
- :mod:`~mechflow.extract.capture`: forward hooks that record each (hook, layer) of a batch in one
  pass, pooled per prompt (:func:`iter_pooled_hooks`) or per real token (:func:`iter_tokens`);
- :mod:`~mechflow.extract.writer`: :class:`ActivationWriter`, the atomic, block-by-block file writer;
- :mod:`~mechflow.extract.run`: extraction to files, pooled (:func:`extract_hooks_to_files`) or token level
  (:func:`extract_tokens_to_file`);
- :mod:`~mechflow.extract.shards`: the prompts one shard extracts and the gather of shard files.

:func:`with_sink` (:mod:`mechflow.sink`) rebuilds the pooling with the left-out position from a file's sink.
"""

from mechflow.extract.capture import _base_model as _base_model
from mechflow.extract.capture import _iter_captures as _iter_captures
from mechflow.extract.capture import _token_lengths as _token_lengths
from mechflow.extract.capture import iter_pooled, iter_pooled_hooks, iter_tokens
from mechflow.extract.pooling import (
    adds_bos,
    log_position_norms,
    pool,
    pooling_mask,
    position_norms,
    resolve_exclude,
    resolve_layers,
    sink_rows,
)
from mechflow.extract.run import extract_hooks_to_files, extract_to_file, extract_tokens_to_file, token_coords
from mechflow.extract.settings import EXCLUDES, POOLINGS, Exclude, ExtractionError, ExtractSettings, Pooling
from mechflow.extract.shards import gather_shards, shard_slice
from mechflow.extract.writer import SINK_DESCRIPTION, ActivationWriter
from mechflow.sink import with_sink

__all__ = [
    "EXCLUDES",
    "POOLINGS",
    "SINK_DESCRIPTION",
    "ActivationWriter",
    "Exclude",
    "ExtractSettings",
    "ExtractionError",
    "Pooling",
    "adds_bos",
    "extract_hooks_to_files",
    "extract_to_file",
    "extract_tokens_to_file",
    "gather_shards",
    "iter_pooled",
    "iter_pooled_hooks",
    "iter_tokens",
    "log_position_norms",
    "pool",
    "pooling_mask",
    "position_norms",
    "resolve_exclude",
    "resolve_layers",
    "shard_slice",
    "sink_rows",
    "token_coords",
    "with_sink",
]
