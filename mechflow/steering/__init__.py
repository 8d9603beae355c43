"""Steering vectors and their measured effects on a causal LM (rule ``steer``).

Modules, one job each:

- ``hook``: add a vector at a hook point and layer through a forward hook that is always removed
  (:func:`steering`);
- ``vectors``: a difference of means between two prompt sets, an SAE decoder row, a semi-NMF factor;
- ``prompts``: the held-out split, the training sides of a difference of means, the measured prompts;
- ``measure``: KL to the unsteered model, entropy and target log-probabilities per scale and prompt at the
  last token, and greedy generations (:func:`steering_effects`, :func:`greedy_generations`);
- ``result``: the ``steering/{dataset}/{model}/{name}.nc`` file;
- ``pipeline``: :func:`run_steering`, the ``steer`` rule's entry point (the vector, its effects, the file's Dataset);

Names are re-exported lazily, so that the study core (``mechflow.steps``) can import submodules without loading
torch; rule scripts import from the submodules.
"""

from __future__ import annotations

from mechflow.lazy import lazy_exports

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "steering": "hook", "positions_from": "hook",
    "mean_difference": "vectors", "pooled_mean": "vectors", "sae_decoder_row": "vectors", "snmf_factor": "vectors",
    "top_moran_feature": "vectors",
    "SteeringEffects": "measure", "steering_effects": "measure", "greedy_generations": "measure",
    "activation_norm": "measure", "first_token_ids": "measure",
    "heldout_mask": "prompts",
    "steering_dataset": "result",
    "run_steering": "pipeline",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
