"""Rule steer: a steering vector added at one hook and layer, its effects per scale on held-out prompts."""

import logging
import time

import numpy as np
import pandas as pd

from mechflow.contracts import upstream_attrs
from mechflow.io import digest, load_dataset, provenance_attrs, write_dataset
from mechflow.lens.model import load_causal_lm
from mechflow.steering.measure import activation_norm, first_token_ids, greedy_generations, steering_effects
from mechflow.steering.prompts import describe_split, eval_rows, heldout_mask, render, side_texts
from mechflow.steering.result import steering_dataset, summary
from mechflow.steering.vectors import mean_difference, sae_decoder_row, snmf_factor, top_moran_feature
from mechflow.workflow import run_rule

log = logging.getLogger("mechflow.steer")


def main(sm) -> None:
    p = dict(sm.params.steering)
    spec, hook, layer = p["vector"], p["vector"]["hook"], int(p["vector"]["layer"])
    prompts = load_dataset(sm.input.prompts)
    t0 = time.perf_counter()
    model, tok, _, prov = load_causal_lm(p["model"])
    t1 = time.perf_counter()
    heldout = heldout_mask(prompts["region"].values, p["holdout"], p["seed"])
    train, source = {}, {"source": spec["source"]}
    if spec["source"] == "means":
        csv = {path: pd.read_csv(path, encoding="utf-8") for path in sm.input.get("csv", [])}
        for i, side in enumerate(("positive", "negative")):
            train[side] = side_texts(spec[side], prompts, ~heldout, spec["template"], p["train_prompts"], p["seed"] + i, csv)
        vector, _, _ = mean_difference(model, tok, train["positive"][0], train["negative"][0], hook, layer, spec["pooling"],
                                       p["batch_size"], p["max_length"])
        source.update(positive=spec["positive"], negative=spec["negative"], pooling=spec["pooling"],
                      template=spec["template"] or "the prompt set's own text")
        eval_from = "held-out prompts of the split (never averaged into the vector)"
    else:
        feature = spec["feature"]
        if feature == "top_moran":
            feature, region, moran_i = top_moran_feature(load_dataset(sm.input.moran[0]))
            source.update(top_moran_region=region, top_moran_I=moran_i)
        if spec["source"] == "sae":
            vector = sae_decoder_row(sm.input.weights[0], feature)
            split = load_dataset(sm.input.features[0]).coords.get("split")
            if split is not None and (split.values.astype(str) == "validation").any():  # the SAE's own held-out prompts
                heldout = np.isin(prompts["prompt"].values, split["prompt"].values[split.values.astype(str) == "validation"])
                eval_from = "the SAE run's validation prompts (never trained on)"
            else:
                eval_from = "held-out prompts of the split (the SAE run has no validation split: it was trained on every prompt)"
        else:
            vector = snmf_factor(load_dataset(sm.input.snmf[0]), feature)
            eval_from = "held-out prompts of the split (semi-NMF factors are fitted on every prompt of the set)"
        source.update(run=spec["run"], feature=int(feature))
    t2 = time.perf_counter()
    train_texts = {t for texts, _ in train.values() for t in texts}
    rows = eval_rows(prompts, heldout, spec["eval_region"], p["eval_prompts"], p["seed"], train_texts, spec["eval_template"])
    measured = prompts.isel(prompt=rows)
    texts = render(prompts, rows, spec["eval_template"])
    targets = first_token_ids(tok, spec["targets"])
    unit = activation_norm(model, tok, texts, hook, layer, p["batch_size"], p["max_length"])
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        raise ValueError(f"steering vector {sm.wildcards.name!r} is zero")
    scales = np.asarray(p["scales"], dtype=np.float64)
    coefs = scales * unit / norm if p["scale_unit"] == "activation_norm" else scales
    effects = steering_effects(model, tok, texts, hook, layer, vector, coefs, targets, p["from_position"], p["batch_size"],
                               p["max_length"])
    t3 = time.perf_counter()
    sample_rows = np.arange(min(p["generations"], len(texts)))
    gens = greedy_generations(model, tok, [texts[i] for i in sample_rows], hook, layer, vector, coefs, p["max_new_tokens"],
                              p["from_position"], p["max_length"])
    log.info("model loaded in %.1f s, vector made in %.1f s, effects measured in %.1f s, generations in %.1f s", t1 - t0,
             t2 - t1, t3 - t2, time.perf_counter() - t3)
    attrs = {
        **upstream_attrs(prompts.attrs), **prov, "dataset": sm.wildcards.dataset, "model": sm.wildcards.model,
        "name": sm.wildcards.name, "hook": hook, "layer": layer, **source, "scale_unit": p["scale_unit"], "unit_norm": unit,
        "vector_norm": norm, "from_position": p["from_position"], "targets": spec["targets"],
        "max_new_tokens": p["max_new_tokens"],
        "eval_template": spec["eval_template"] or "the prompt set's own text", "eval_region": spec["eval_region"] or "all",
        **describe_split({k: len(v[0]) for k, v in train.items()}, len(texts), p["holdout"], p["seed"], eval_from),
        "scale_definition": ("added = scale * unit_norm * vector / |vector| (unit_norm: mean L2 norm of the hook's activation "
                          "over the measured prompts' tokens, the first token left out)" if p["scale_unit"] == "activation_norm"
                          else "added = scale * vector")}
    ds = steering_dataset(effects, scales, coefs, measured, texts, spec["targets"], targets, lambda i: tok.decode([i]),
                          gens, sample_rows, vector, train, provenance_attrs(digest({"steering": p, "code": sm.params.code}),
                                                                             **attrs))
    log.info("steering %s at %s layer %d, |vector| %.4g, unit %.4g: %s", sm.wildcards.name, hook, layer, norm, unit,
             summary(ds))
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
