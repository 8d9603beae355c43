"""Rule tuned_lens: fit one affine translator per layer on the lens prompts no read-out reads (Belrose et al. 2023)."""

import logging

import numpy as np
import xarray as xr

from mechflow.io import digest, load_dataset, provenance_attrs, write_dataset
from mechflow.lens.model import load_causal_lm
from mechflow.lens.prompt_sets import split_of
from mechflow.lens.residuals import position_residuals, token_ids
from mechflow.lens.tuned import fit_prompts_dataset, fit_split, fit_tuned_lens, training_dataset
from mechflow.lens.unembed import LensError
from mechflow.workflow import run_rule


def main(sm) -> None:
    t, read = dict(sm.params.tuned), dict(sm.params.read)
    pools = [(p, split_of(load_dataset(p), "lens")) for p in sm.input.prompts]
    texts = [str(x) for _, ds in pools for x in ds["text"].values]
    if not texts:
        raise LensError("no lens prompt set keeps prompts for the tuned lens's fit (every prompt is read out): draw fewer "
                        "than all with lens.latent_language.max_words or lens.consistency.max_questions")
    sets = [str(ds.attrs.get("dataset", p)) for p, ds in pools for _ in range(ds.sizes["prompt"])]
    prompt_ids = np.concatenate([ds["prompt"].values for _, ds in pools])
    model, tok, unembed, prov = load_causal_lm(sm.params.model)
    split = fit_split(token_ids(tok, texts, read["max_length"]), t["max_tokens"], t["holdout"], t["seed"])
    h = position_residuals(model, tok, texts, split.positions, read["batch_size"], read["max_length"]).to(unembed.weight.device)
    used = fit_prompts_dataset(split, sets, prompt_ids)
    logging.getLogger(__name__).info("tuned lens: residuals of %d layers at %d positions of %d prompts (%s); %d held-out "
                                     "positions dropped for a training prefix", h.shape[0], h.shape[1], used.sizes["fit_prompt"],
                                     ", ".join(f"{k} {v}" for k, v in used.attrs.items() if k.endswith("_prompts")), split.dropped)
    fit = fit_tuned_lens(h, unembed, split=split.position_roles(), init=t["init"], steps=t["steps"],
                         batch_tokens=t["batch_tokens"], lr=t["lr"], ridge=t["ridge"], seed=t["seed"],
                         eval_every=t["eval_every"], chunk_bytes=read["chunk_mb"] * 2**20)
    attrs = provenance_attrs(digest({"tuned": t, "read": read, "model": sm.params.model, "code": sm.params.code}),
                             model=sm.wildcards.model, **prov, tuned=t)
    fit.lens.save(sm.output.weights, {k: str(v) for k, v in attrs.items()})
    ds = xr.merge([training_dataset(fit), used], combine_attrs="no_conflicts")
    write_dataset(ds.assign_attrs(**attrs), sm.output.training)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
