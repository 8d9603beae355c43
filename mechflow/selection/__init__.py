"""Task-specific data selection in SAE space (MoNA: Ma et al. 2025, "Task-Specific Data Selection for Instruction
Tuning via Monosemantic Neuronal Activations"); method and outputs: docs/selection.md.

Each sample is represented by its SAE activations averaged over its tokens; the target task by the mean
of a few target samples' representations (the prototype); candidates are ranked by the generalized
Jaccard similarity ``sum_i min(x_i, p_i) / sum_i max(x_i, p_i)`` of their sparse, nonnegative codes to
the prototype. Baselines: cosine on the raw activations of the same hook and layer, cosine on the SAE
codes, and cosine on a sentence encoder's embeddings.

Modules, one job each:

- ``similarity``: generalized Jaccard, cosine, the prototype, ranks, precision@k (pure, batched);
- ``encode``: :func:`encode_texts` (LM -> token activations -> SAE -> mean per text) and :func:`embed_texts`;
- ``data``: candidate / target CSVs; ``ranking``: the ranking Dataset and its CSV table;
- ``pipeline``: :func:`run_selection`, the ``select`` rule's entry point;

Names are re-exported lazily, so the study core (``mechflow.steps``) imports submodules without loading torch.
"""

from __future__ import annotations

from mechflow.lazy import lazy_exports

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "generalized_jaccard": "similarity", "generalized_jaccard_pairwise": "similarity", "cosine_similarity": "similarity",
    "cosine_pairwise": "similarity", "prototype": "similarity", "similarity_to_target": "similarity", "rank": "similarity",
    "precision_at_k": "similarity",
    "EncodedTexts": "encode", "encode_texts": "encode", "embed_texts": "encode", "SAE_INPUTS": "encode",
    "SelectionError": "data", "read_texts": "data", "read_column": "data",
    "METHODS": "ranking", "BASELINES": "ranking", "ranking_dataset": "ranking", "ranking_table": "ranking",
    "run_selection": "pipeline", "score_all": "pipeline",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
