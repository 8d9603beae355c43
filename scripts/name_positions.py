"""Rule name_positions: the name's last token and the mean over its tokens, from the token-level activations."""

import logging
import time

from mechflow.extract.names import name_positions, name_spans, name_token_mask
from mechflow.extract.writer import ActivationWriter
from mechflow.io import digest, load_dataset, open_dataset, provenance_attrs
from mechflow.models import load_tokenizer, resolve_model
from mechflow.workflow import run_rule

DESCRIPTION = {"last": "activation at the name's last token",
               "mean": "mean activation over the name's tokens (its first included, even where it is the attention sink)"}


def main(sm) -> None:
    p = dict(sm.params.names)
    t0 = time.perf_counter()
    prompts = load_dataset(sm.input.prompts)
    start, end = name_spans(prompts, p["template"])
    masks = name_token_mask(load_tokenizer(resolve_model(p["model"])), prompts["text"].values.astype(str), start, end,
                            p["max_length"])
    with open_dataset(sm.input.tokens) as tokens:
        out = name_positions(tokens, masks, p["layers"], prompts)
        upstream = dict(tokens.attrs)
    for position, da in out.items():
        attrs = provenance_attrs(digest({"names": p, "code": sm.params.code}), dataset=sm.wildcards.dataset,
                                 model=sm.wildcards.model, hook=sm.wildcards.hook, pooling=f"name_{position}",
                                 description=DESCRIPTION[position], template=p["template"],
                                 tokens_config_digest=upstream.get("config_digest", ""),
                                 **{k: upstream[k] for k in ("model_spec", "model_digest", "random_init") if k in upstream})
        coords = da.drop_vars(["layer", "unit"]).coords.to_dataset()
        with ActivationWriter(sm.output[position], coords, da["layer"].values.tolist(), attrs) as writer:
            writer.write_rows(0, da.values)
    logging.getLogger(__name__).info("name positions of %d prompts at %d layers in %.1f s", len(masks), len(p["layers"]),
                                     time.perf_counter() - t0)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
