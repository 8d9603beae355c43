"""Rule snmf: semi-NMF of one layer's activations; writes F, G, loss and each factor's top prompts.

At token level, the factorisation runs over every token; ``G`` [prompt, factor] is then each
prompt's maximum over its tokens (so spatial analysis sees one value per place) and ``G_token``
[token, factor] keeps the token-level loadings. The layer is read from the activations file in
blocks of samples: kept in memory when they fit the job's ``mem_mb``, else (and always with
``snmf.out_of_core: true``) read again at every pass (the same result to the bit; :mod:`mechflow.snmf.blocks`).
"""

import logging

from mechflow.contracts import upstream_attrs
from mechflow.devices import resolve_device
from mechflow.io import FeatureColumns, digest, write_dataset
from mechflow.kernels import set_backend
from mechflow.snmf.algorithm import fit
from mechflow.snmf.blocks import plan_this_process
from mechflow.snmf.config import SNMFError, SNMFRunConfig
from mechflow.snmf.result import tokens_to_prompts, top_prompts
from mechflow.snmf.runtime import SNMFRuntime
from mechflow.workflow import run_rule


def main(sm) -> None:
    set_backend(sm.params.kernels)
    run = dict(sm.params.run)
    layer = int(sm.wildcards.layer)
    tokens = sm.params.level == "tokens"
    with FeatureColumns(sm.input[0], "units", layer) as features:
        units = features.lazy()  # [prompt, unit] or [token, unit], read block by block
        if tokens:
            units = units.rename(token="prompt")  # samples are tokens
        n_samples, n_units = units.shape
        device = resolve_device(sm.params.device, SNMFError, "snmf")
        in_memory = plan_this_process(n_units, n_samples, int(run["n_factors"]), sm.resources.mem_mb, device,
                                      out_of_core=sm.params.out_of_core)
        logging.getLogger("mechflow").info("semi-NMF of %d x %d on %s: A %s (mem_mb %s, out_of_core %s)", n_units, n_samples,
                                           device, "in memory" if in_memory else "read from disk at every pass",
                                           sm.resources.mem_mb, sm.params.out_of_core)
        # [sample, unit] as stored: fit reads it by unit dim
        result = fit(units, SNMFRunConfig.from_dict(run), SNMFRuntime(device=device, in_memory=in_memory))
    attrs = {**upstream_attrs(units.attrs), "layer": layer, "run": sm.wildcards.run, "level": sm.params.level,
             "config_digest": digest({"run": run, "device": sm.params.device, "code": sm.params.code})}
    ds = result.to_dataset(attrs=attrs)
    top = top_prompts(ds, k=min(int(sm.params.top_prompts), n_samples))
    if tokens:
        ds = tokens_to_prompts(ds)  # G per prompt (max over its tokens), G_token kept
        top = top.rename(prompt="token_index")
    for name in top.data_vars:
        ds[f"top_{name}"] = top[name]
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
