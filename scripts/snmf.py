"""Rule snmf: semi-NMF of one layer's activations; writes F, G, loss and each factor's top prompts."""

from mechflow import snmf
from mechflow.analysis import load_feature_set
from mechflow.io import digest, write_dataset
from mechflow.kernels import set_backend
from mechflow.workflow import run_rule

UPSTREAM = ("dataset", "model", "model_digest", "hook", "pooling")


def main(sm) -> None:
    set_backend(sm.params.kernels)
    run = dict(sm.params.run)
    layer = int(sm.wildcards.layer)
    units = load_feature_set(sm.input[0], "units", layer)  # [prompt, unit]
    result = snmf.fit(units.T, **run)
    attrs = {k: units.attrs[k] for k in UPSTREAM if k in units.attrs}
    ds = result.to_dataset(prompt_coords=units, attrs={**attrs, "layer": layer, "run": sm.wildcards.run,
                                                          "config_digest": digest({"run": run, "code": sm.params.code})})
    top = snmf.top_prompts(ds, k=min(int(sm.params.top_prompts), units.sizes["prompt"]))
    for name in top.data_vars:
        ds[f"top_{name}"] = top[name]
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
