"""Semi-nonnegative matrix factorisation of MLP activations (Shafran, Geiger & Geva 2025).

``fit(A, cfg, runtime)`` factorises ``A [units, samples] ~ F G^T`` (F sparse, mixed sign; G >= 0;
:mod:`mechflow.snmf.algorithm`); :mod:`~mechflow.snmf.inputs` coerces and checks the inputs;
:mod:`~mechflow.snmf.result` holds :class:`SNMFResult` and its xarray contract (``to_dataset``,
``top_prompts``, ``tokens_to_prompts``); :mod:`~mechflow.snmf.config` the typed run config
(:class:`SNMFRunConfig`, ``validate_run``, ``run_schema``) whose defaults are ``fit``'s;
:mod:`~mechflow.snmf.runtime` how a fit runs (:class:`SNMFRuntime`).

The names below are re-exported lazily, so that resolving a study (which validates its semi-NMF runs
with :mod:`~mechflow.snmf.config`) does not load torch; code whose digest matters (rule scripts)
imports from the submodules.
"""

from __future__ import annotations

from mechflow.lazy import lazy_exports

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "DEFAULTS": "algorithm", "fit": "algorithm",
    "INITS": "config", "Init": "config", "SNMFError": "config", "SNMFRunConfig": "config", "run_schema": "config",
    "validate_run": "config",
    "check_sparsity": "inputs", "n_keep_for": "inputs",
    "LOSS_DEFINITION": "result", "SAMPLE_DIM": "result", "UNIT_DIM": "result", "SNMFResult": "result",
    "tokens_to_prompts": "result", "top_prompts": "result",
    "SNMFRuntime": "runtime",
}
__all__ = [
    "DEFAULTS", "INITS", "LOSS_DEFINITION", "SAMPLE_DIM", "UNIT_DIM", "Init", "SNMFError", "SNMFResult", "SNMFRunConfig",
    "SNMFRuntime", "check_sparsity", "fit", "n_keep_for", "run_schema", "tokens_to_prompts", "top_prompts", "validate_run",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
