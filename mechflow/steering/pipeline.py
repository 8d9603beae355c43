"""Entry point of the ``steer`` Snakemake rule: one steering job's params and input files -> the steering Dataset.

Loads the causal LM, makes the vector (a difference of means over training prompts, an SAE decoder row or a
semi-NMF factor), measures what adding it at each scale does to the next token of held-out prompts, samples greedy
generations, and returns :func:`mechflow.steering.result.steering_dataset` with provenance attrs. The rule script
writes it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.contracts import upstream_attrs
from mechflow.io import load_dataset, provenance_attrs
from mechflow.lens.model import load_causal_lm
from mechflow.steering.measure import (
    SteeringEffects,
    activation_norm,
    first_token_ids,
    greedy_generations,
    steering_effects,
)
from mechflow.steering.prompts import describe_split, eval_rows, heldout_mask, render, side_texts
from mechflow.steering.result import steering_dataset, summary
from mechflow.steering.vectors import mean_difference, sae_decoder_row, snmf_factor, top_moran_feature

__all__ = ["run_steering", "SteeringVector", "Measurement"]

log = logging.getLogger("mechflow.steer")


def run_steering(params: Mapping[str, Any], inputs: Mapping[str, Any], name: str, dataset: str, model: str,
                 config_digest: str = "") -> xr.Dataset:
    """The steering file of vector ``name`` on prompt set ``dataset`` and model ``model``.

    ``params``: the job's params, as the rule gets them: ``model`` (the model's config entry), ``vector`` (the
    vector's config entry, its hook resolved) and the ``steering`` section's settings. ``inputs``: the rule's input
    files by name: ``prompts``, and per source ``csv`` (the CSV sides of a difference of means), ``weights`` and
    ``features`` (an SAE run), ``snmf`` (a semi-NMF file), ``moran`` (the Moran file that picks ``top_moran``); each a
    path or a one-element list of paths, as the rule gives them.
    ``config_digest`` goes into the file's provenance attrs.
    """
    p, spec = params, params["vector"]
    hook, layer = spec["hook"], int(spec["layer"])
    prompts = load_dataset(_path(inputs, "prompts"))
    t0 = time.perf_counter()
    lm, tok, _, prov = load_causal_lm(p["model"])
    t1 = time.perf_counter()
    vector = make_vector(p, inputs, prompts, lm, tok)
    t2 = time.perf_counter()
    m = measure(p, name, prompts, vector, lm, tok)
    t3 = time.perf_counter()
    sample_rows = np.arange(min(p["generations"], len(m.texts)))
    gens = greedy_generations(lm, tok, [m.texts[i] for i in sample_rows], hook, layer, vector.values, m.coefs,
                              p["max_new_tokens"], p["from_position"], p["max_length"])
    log.info("model loaded in %.1f s, vector made in %.1f s, effects measured in %.1f s, generations in %.1f s", t1 - t0,
             t2 - t1, t3 - t2, time.perf_counter() - t3)
    attrs = {**upstream_attrs(prompts.attrs), **prov, "dataset": dataset, "model": model, "name": name,
             **describe(p, vector, m)}
    ds = steering_dataset(m.effects, m.scales, m.coefs, prompts.isel(prompt=m.rows), m.texts, spec["targets"],
                          m.target_ids, lambda i: tok.decode([i]), gens, sample_rows, vector.values, vector.train,
                          provenance_attrs(config_digest, **attrs))
    log.info("steering %s at %s layer %d, |vector| %.4g, unit %.4g: %s", name, hook, layer, m.norm, m.unit, summary(ds))
    return ds


# ---- the vector ---------------------------------------------------------------------------------------


@dataclass
class SteeringVector:
    """A steering vector and the prompts it may be measured on."""

    values: np.ndarray  #: [unit]
    heldout: np.ndarray  #: [prompt] bool: the prompts it was not made from
    train: dict[str, tuple[list[str], np.ndarray]]  #: side -> (texts, prompt ids) of a difference of means; else empty
    source: dict[str, Any]  #: attrs that say where it came from
    eval_from: str  #: what the measured prompts are, in words


def make_vector(p: Mapping[str, Any], inputs: Mapping[str, Any], prompts: xr.Dataset, lm: Any, tok: Any) -> SteeringVector:
    """The vector ``p["vector"]`` asks for: a difference of means over the prompts the split leaves for training,
    or a feature (an SAE decoder row, a semi-NMF factor; ``top_moran``: the feature of highest Moran's I)."""
    spec = p["vector"]
    heldout = heldout_mask(prompts["region"].values, p["holdout"], p["seed"])
    if spec["source"] == "means":
        return _mean_difference(p, inputs, prompts, heldout, lm, tok)
    source: dict[str, Any] = {"source": spec["source"]}
    feature = spec["feature"]
    if feature == "top_moran":
        feature, region, moran_i = top_moran_feature(load_dataset(_path(inputs, "moran")))
        source.update(top_moran_region=region, top_moran_I=moran_i)
    if spec["source"] == "sae":
        values = sae_decoder_row(_path(inputs, "weights"), feature)
        split = load_dataset(_path(inputs, "features")).coords.get("split")
        if split is not None and (split.values.astype(str) == "validation").any():  # the SAE's own held-out prompts
            heldout = np.isin(prompts["prompt"].values, split["prompt"].values[split.values.astype(str) == "validation"])
            eval_from = "the SAE run's validation prompts (never trained on)"
        else:
            eval_from = "held-out prompts of the split (the SAE run has no validation split: it was trained on every prompt)"
    else:
        values = snmf_factor(load_dataset(_path(inputs, "snmf")), feature)
        eval_from = "held-out prompts of the split (semi-NMF factors are fitted on every prompt of the set)"
    source.update(run=spec["run"], feature=int(feature))
    return SteeringVector(values, heldout, {}, source, eval_from)


def _mean_difference(p: Mapping[str, Any], inputs: Mapping[str, Any], prompts: xr.Dataset, heldout: np.ndarray, lm: Any,
                     tok: Any) -> SteeringVector:
    """Mean activation of the positive side minus the negative side's, each side drawn from the training prompts
    (or read from a CSV file)."""
    spec = p["vector"]
    csv = {path: pd.read_csv(path, encoding="utf-8") for path in inputs.get("csv", [])}
    train = {side: side_texts(spec[side], prompts, ~heldout, spec["template"], p["train_prompts"], p["seed"] + i, csv)
             for i, side in enumerate(("positive", "negative"))}
    values, _, _ = mean_difference(lm, tok, train["positive"][0], train["negative"][0], spec["hook"], int(spec["layer"]),
                                   spec["pooling"], p["batch_size"], p["max_length"])
    source = {"source": "means", "positive": spec["positive"], "negative": spec["negative"], "pooling": spec["pooling"],
              "template": spec["template"] or "the prompt set's own text"}
    return SteeringVector(values, heldout, train, source,
                          "held-out prompts of the split (never averaged into the vector)")


def _path(inputs: Mapping[str, Any], key: str) -> str | os.PathLike:
    """The one file of ``inputs[key]``: a path, or a one-element list of paths (the rule's named input lists)."""
    value = inputs[key]
    return value if isinstance(value, (str, os.PathLike)) else value[0]


# ---- its effects --------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """The vector's effects per scale on the measured prompts."""

    rows: np.ndarray  #: the measured prompts, positions in the prompt set
    texts: list[str]  #: their texts as scored (``eval_template`` applied)
    target_ids: list[int]  #: first token of each target
    unit: float  #: mean L2 norm of the hook's activation over the measured prompts' tokens
    norm: float  #: |vector|
    scales: np.ndarray  #: [scale] as configured
    coefs: np.ndarray  #: [scale] what multiplies the vector
    effects: SteeringEffects


def measure(p: Mapping[str, Any], name: str, prompts: xr.Dataset, vector: SteeringVector, lm: Any,
            tok: Any) -> Measurement:
    """KL to the unsteered model, entropy and target log-probabilities per scale on held-out prompts that no side of a
    difference of means used; ``scale_unit: activation_norm`` scales the unit vector by the hook's mean norm."""
    spec = p["vector"]
    hook, layer = spec["hook"], int(spec["layer"])
    train_texts = {t for texts, _ in vector.train.values() for t in texts}
    rows = eval_rows(prompts, vector.heldout, spec["eval_region"], p["eval_prompts"], p["seed"], train_texts,
                     spec["eval_template"])
    texts = render(prompts, rows, spec["eval_template"])
    targets = first_token_ids(tok, spec["targets"])
    unit = activation_norm(lm, tok, texts, hook, layer, p["batch_size"], p["max_length"])
    norm = float(np.linalg.norm(vector.values))
    if norm == 0:
        raise ValueError(f"steering vector {name!r} is zero")
    scales = np.asarray(p["scales"], dtype=np.float64)
    coefs = scales * unit / norm if p["scale_unit"] == "activation_norm" else scales
    effects = steering_effects(lm, tok, texts, hook, layer, vector.values, coefs, targets, p["from_position"],
                               p["batch_size"], p["max_length"])
    return Measurement(rows, texts, targets, unit, norm, scales, coefs, effects)


# ---- the file's attrs ---------------------------------------------------------------------------------


def describe(p: Mapping[str, Any], vector: SteeringVector, m: Measurement) -> dict[str, Any]:
    """What the file's attrs say about the vector, the split and the scale (after the prompt set's and model's)."""
    spec = p["vector"]
    return {
        "hook": spec["hook"], "layer": int(spec["layer"]), **vector.source, "scale_unit": p["scale_unit"],
        "unit_norm": m.unit, "vector_norm": m.norm, "from_position": p["from_position"], "targets": spec["targets"],
        "max_new_tokens": p["max_new_tokens"],
        "eval_template": spec["eval_template"] or "the prompt set's own text", "eval_region": spec["eval_region"] or "all",
        **describe_split({k: len(v[0]) for k, v in vector.train.items()}, len(m.texts), p["holdout"], p["seed"],
                         vector.eval_from),
        "scale_definition": ("added = scale * unit_norm * vector / |vector| (unit_norm: mean L2 norm of the hook's "
                             "activation over the measured prompts' tokens, the first token left out)"
                             if p["scale_unit"] == "activation_norm" else "added = scale * vector")}
