"""Rule snmf: semi-NMF of one layer's activations; writes F, G, loss and each factor's top prompts.

At token level, the factorisation runs over every token; ``G`` [prompt, factor] is then each
prompt's maximum over its tokens (so spatial analysis sees one value per place) and ``G_token``
[token, factor] keeps the token-level loadings.
"""

from mechflow import snmf
from mechflow.contracts import upstream_attrs
from mechflow.io import digest, load_dataarray, load_feature_set, write_dataset
from mechflow.kernels import set_backend
from mechflow.workflow import run_rule


def main(sm) -> None:
    set_backend(sm.params.kernels)
    run = dict(sm.params.run)
    layer = int(sm.wildcards.layer)
    tokens = sm.params.level == "tokens"
    if tokens:
        units = load_dataarray(sm.input[0], layer=layer).rename(token="prompt")  # samples are tokens; one layer read
    else:
        units = load_feature_set(sm.input[0], "units", layer)  # [prompt, unit]
    result = snmf.fit(units.T, **run)
    attrs = {**upstream_attrs(units.attrs), "layer": layer, "run": sm.wildcards.run, "level": sm.params.level,
             "config_digest": digest({"run": run, "code": sm.params.code})}
    ds = result.to_dataset(prompt_coords=units, attrs=attrs)
    top = snmf.top_prompts(ds, k=min(int(sm.params.top_prompts), units.sizes["prompt"]))
    if tokens:
        ds = snmf.tokens_to_prompts(ds)  # G per prompt (max over its tokens), G_token kept
        top = top.rename(prompt="token_index")
    for name in top.data_vars:
        ds[f"top_{name}"] = top[name]
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
