"""Rule tuned_lens: fit one affine translator per layer on the study's lens prompts (Belrose et al. 2023)."""

import logging

from mechflow.io import digest, load_dataset, provenance_attrs, write_dataset
from mechflow.lens.model import load_causal_lm
from mechflow.lens.residuals import position_residuals, token_ids
from mechflow.lens.tuned import fit_tuned_lens, training_dataset, training_positions
from mechflow.workflow import run_rule


def main(sm) -> None:
    t, read = dict(sm.params.tuned), dict(sm.params.read)
    texts = [str(x) for p in sm.input.prompts for x in load_dataset(p)["text"].values]
    model, tok, unembed, prov = load_causal_lm(sm.params.model)
    lengths = [len(i) for i in token_ids(tok, texts, read["max_length"])]
    positions = training_positions(lengths, t["max_tokens"], t["seed"])
    h = position_residuals(model, tok, texts, positions, read["batch_size"], read["max_length"]).to(unembed.weight.device)
    logging.getLogger(__name__).info("tuned lens: residuals of %d layers at %d positions of %d prompts", h.shape[0], h.shape[1],
                                     sum(1 for p in positions if p))
    fit = fit_tuned_lens(h, unembed, init=t["init"], steps=t["steps"], batch_tokens=t["batch_tokens"], lr=t["lr"],
                         ridge=t["ridge"], holdout=t["holdout"], seed=t["seed"], eval_every=t["eval_every"],
                         chunk_bytes=read["chunk_mb"] * 2**20)
    attrs = provenance_attrs(digest({"tuned": t, "read": read, "model": sm.params.model, "code": sm.params.code}),
                             model=sm.wildcards.model, **prov, tuned=t)
    fit.lens.save(sm.output.weights, {k: str(v) for k, v in attrs.items()})
    write_dataset(training_dataset(fit).assign_attrs(**attrs), sm.output.training)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
