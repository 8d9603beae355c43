"""Rule snmf: semi-NMF of one layer's activations; writes F, G, loss and each factor's top prompts.

At token level, the factorisation runs over every token; ``G`` [prompt, factor] is then each
prompt's maximum over its tokens (so spatial analysis sees one value per place) and ``G_token``
[token, factor] keeps the token-level loadings.
"""

from mechflow import snmf
from mechflow.analysis import load_feature_set
from mechflow.io import digest, load_dataarray, write_dataset
from mechflow.kernels import set_backend
from mechflow.workflow import run_rule

UPSTREAM = ("dataset", "model", "model_digest", "hook", "pooling")


def main(sm) -> None:
    set_backend(sm.params.kernels)
    run = dict(sm.params.run)
    layer = int(sm.wildcards.layer)
    tokens = sm.params.level == "tokens"
    if tokens:
        da = load_dataarray(sm.input[0])
        if layer not in da["layer"].values.tolist():
            raise ValueError(f"{sm.input[0]}: layer {layer} was not extracted")
        units = da.sel(layer=layer, drop=True).rename(token="prompt")  # samples are tokens
    else:
        units = load_feature_set(sm.input[0], "units", layer)  # [prompt, unit]
    result = snmf.fit(units.T, **run)
    attrs = {k: units.attrs[k] for k in UPSTREAM if k in units.attrs}
    ds = result.to_dataset(prompt_coords=units, attrs={**attrs, "layer": layer, "run": sm.wildcards.run, "level": sm.params.level,
                                                          "config_digest": digest({"run": run, "code": sm.params.code})})
    top = snmf.top_prompts(ds, k=min(int(sm.params.top_prompts), units.sizes["prompt"]))
    if tokens:
        ds = ds.rename(prompt="token")
        g_token = ds["G"]
        per_prompt = g_token.groupby(ds["prompt_index"]).max().rename(prompt_index="prompt")
        first = ds["position"].values == 0  # one row per prompt: the prompt coordinates move to dim prompt
        names = [n for n in ("text", "latitude", "longitude", "region", "place_id") if n in ds.coords]
        per_prompt = per_prompt.assign_coords({n: ("prompt", ds[n].values[first]) for n in names})
        ds = ds.drop_vars(["G", *names]).assign(G_token=g_token.drop_vars(names), G=per_prompt)
        top = top.rename(prompt="token_index")
    for name in top.data_vars:
        ds[f"top_{name}"] = top[name]
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
