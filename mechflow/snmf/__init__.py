"""Semi-nonnegative matrix factorisation of MLP activations (Shafran, Geiger & Geva 2025).

``fit(A, cfg, runtime)`` factorises ``A [units, samples] ~ F G^T`` (F sparse, mixed sign; G >= 0;
:mod:`mechflow.snmf.algorithm`); :mod:`~mechflow.snmf.inputs` coerces and checks the inputs;
:mod:`~mechflow.snmf.result` holds :class:`SNMFResult` and its xarray contract (``to_dataset``,
``top_prompts``, ``tokens_to_prompts``); :mod:`~mechflow.snmf.config` the typed run config
(:class:`SNMFRunConfig`, ``validate_run``, ``run_schema``) whose defaults are ``fit``'s;
:mod:`~mechflow.snmf.runtime` how a fit runs (:class:`SNMFRuntime`).
"""

from mechflow.snmf.algorithm import DEFAULTS, fit
from mechflow.snmf.config import INITS, Init, SNMFError, SNMFRunConfig, run_schema, validate_run
from mechflow.snmf.inputs import check_sparsity, n_keep_for
from mechflow.snmf.result import LOSS_DEFINITION, SAMPLE_DIM, UNIT_DIM, SNMFResult, tokens_to_prompts, top_prompts
from mechflow.snmf.runtime import SNMFRuntime

__all__ = [
    "DEFAULTS", "INITS", "LOSS_DEFINITION", "SAMPLE_DIM", "UNIT_DIM", "Init", "SNMFError", "SNMFResult", "SNMFRunConfig",
    "SNMFRuntime", "check_sparsity", "fit", "n_keep_for", "run_schema", "tokens_to_prompts", "top_prompts", "validate_run",
]
