"""Reading the layers through the model's own unembedding: logit lens, tuned lens, latent language, internal consistency.

Modules, one job each:

- ``unembed``: find a causal LM's final norm and unembedding (:func:`find_unembedding`);
- ``errors``: :class:`LensError`, which the workflow's checks raise without loading torch;
- ``chunked``: softmax statistics over the vocabulary in chunks, for every layer and prompt at once
  (:func:`read_vocab`), and the differentiable chunked log-sum-exp;
- ``residuals``: every block's output at the answer position (or chosen positions), from hooks;
- ``reader``: :func:`read_layers`, the logit / tuned lens read-out of a prompt batch;
- ``tuned``: the tuned lens (Belrose et al. 2023): translators, KL fit, safetensors;
- ``words``, ``latent_language``: the word-translation list and the latent-language contract
  (Wendler et al. 2024; Zhong et al. 2024);
- ``questions``, ``consistency``, ``sampling``: multiple-choice sets and internal consistency
  (Xie et al. 2024);
- ``prompt_sets``: lens prompt sets as files (``lens/{dataset}/prompts.nc``) and back;
- ``model``: load a study model with its head, frozen, with provenance;

The names below are re-exported lazily, so that the study core (``mechflow.steps``) can import
submodules without loading torch; code whose digest matters (rule scripts) imports from the
submodules.
"""

from __future__ import annotations

from mechflow.lazy import lazy_exports

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "VocabReadout": "chunked", "read_vocab": "chunked", "logsumexp": "chunked", "softmax_moments": "chunked",
    "calibration_curve": "consistency", "internal_consistency": "consistency", "weighted_vote": "consistency",
    "LENSES": "reader", "LayerReadout": "reader", "pad_token_sets": "reader", "read_layers": "reader",
    "TunedLens": "tuned", "fit_tuned_lens": "tuned",
    "LensError": "errors", "Unembedding": "unembed", "find_unembedding": "unembed",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
