"""Entry point of the ``select`` rule: a selection's params and its SAE directory -> the ranking Dataset.

Reads the candidate and target CSVs, loads the SAE's language model and the SAE, represents every text
by its mean SAE code and mean raw activation over its tokens (:func:`mechflow.selection.encode_texts`),
scores each candidate against the target (generalized Jaccard on SAE codes; cosine baselines), and
returns :func:`mechflow.selection.ranking_dataset`. The rule script writes it (netCDF and CSV).
"""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mechflow.models import load_model, model_digest, resolve_model
from mechflow.sae.export import load_sae
from mechflow.selection.data import SelectionError, read_column, read_texts
from mechflow.selection.encode import embed_texts, encode_texts
from mechflow.selection.ranking import PRIMARY, ranking_dataset
from mechflow.selection.similarity import similarity_to_target

__all__ = ["run_selection", "score_all"]

log = logging.getLogger(__name__)


def score_all(candidates: dict[str, np.ndarray], target: dict[str, np.ndarray], methods: list[str],
              aggregate: str = "prototype") -> dict[str, np.ndarray]:
    """Each method's similarity of every candidate to the target: method -> [n].

    ``candidates`` / ``target``: representation name -> [n, .] / [m, .] arrays, with ``features`` (mean SAE
    codes), ``raw`` (mean raw activations) and, for the embedding baseline, ``embedding``.
    ``jaccard``: generalized Jaccard on ``features``; ``sae_cosine``, ``raw_cosine``, ``embedding``: cosine.
    """
    space = {"jaccard": ("features", "jaccard"), "sae_cosine": ("features", "cosine"), "raw_cosine": ("raw", "cosine"),
             "embedding": ("embedding", "cosine")}
    out = {}
    for m in methods:
        rep, metric = space[m]
        out[m] = similarity_to_target(candidates[rep], target[rep], metric, aggregate)
    return out


def _sae_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    mf, meta = cfg.get("mechflow", {}), cfg.get("metadata", {})
    run = mf.get("run", {}) or {}
    return {"hook": mf.get("hook"), "layer": meta.get("hook_layer", cfg.get("hook_layer")),
            "arch": mf.get("arch", ""), "trained_on": str(run.get("level", "pooled")) + (
                f" ({mf['pooling']} over tokens)" if mf.get("pooling") and run.get("level", "pooled") == "pooled" else "")}


def run_selection(params: dict[str, Any], sae_dir: str | Path, base_dir: str | Path = ".", attrs: dict[str, Any] | None = None,
                  progress: bool = False) -> xr.Dataset:
    """The ranking of one selection (params as :func:`mechflow.selection.jobs.selection_params` makes them)."""
    base = Path(base_dir)

    def at(path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else base / path

    cand_src, targ_src = params["candidates"], params["target"]
    candidates = read_texts(at(cand_src["path"]), cand_src.get("text", "text"), cand_src.get("id"))
    target = read_texts(at(targ_src["path"]), targ_src.get("text", "text"), targ_src.get("id"))
    relevant = None
    if params.get("relevant"):
        rel = params["relevant"]
        relevant = read_column(at(cand_src["path"]), rel["column"]) == str(rel["value"])
    sae_job = params["sae"]
    m = params["model"]
    resolved = resolve_model(m["spec"], base)
    model, tokenizer = load_model(resolved, device=m["device"], dtype=m["dtype"], random_init=m["random_init"],
                                  init_seed=m["init_seed"])
    sae = load_sae(sae_dir, device=next(model.parameters()).device)
    meta = _sae_meta(sae.cfg)
    if meta["hook"] not in (None, sae_job["hook"]) or meta["layer"] not in (None, int(sae_job["layer"])):
        raise SelectionError(f"{sae_dir}: the SAE was trained on {meta['hook']} layer {meta['layer']}, the selection "
                             f"asks for {sae_job['hook']} layer {sae_job['layer']}")
    if params["sae_input"] == "tokens" and meta["trained_on"].startswith("pooled"):
        log.info("the SAE was trained on mean-pooled prompts; sae_input: tokens encodes single tokens with it "
                 "(MoNA's setting); sae_input: pooled encodes the mean activation instead")
    kw = dict(hook=sae_job["hook"], layer=int(sae_job["layer"]), batch_size=params["batch_size"], exclude=params["exclude"],
              max_length=params["max_length"], sae_input=params["sae_input"], progress=progress)
    enc_c = encode_texts(model, tokenizer, sae, texts=candidates["text"].tolist(), **kw)
    enc_t = encode_texts(model, tokenizer, sae, texts=target["text"].tolist(), **kw)
    reps_c = {"features": enc_c.features, "raw": enc_c.raw}
    reps_t = {"features": enc_t.features, "raw": enc_t.raw}
    digest = model_digest(resolved)
    del model, sae
    gc.collect()
    methods = [PRIMARY] + [b for b in params["baselines"] if b != PRIMARY]
    if "embedding" in methods:
        emb_model, emb_tok = load_model(resolve_model(params["embedding_model"], base), device=m["device"])
        reps_c["embedding"] = embed_texts(emb_model, emb_tok, candidates["text"].tolist(), params["batch_size"],
                                          params["max_length"])
        reps_t["embedding"] = embed_texts(emb_model, emb_tok, target["text"].tolist(), params["batch_size"],
                                          params["max_length"])
        del emb_model
    scores = score_all(reps_c, reps_t, methods, params["aggregate"])
    proto = enc_t.features.astype(np.float64).mean(0)
    info = {
        "dataset": sae_job["dataset"], "model": sae_job["model"], "model_spec": m["spec"], "model_digest": digest,
        "hook": sae_job["hook"], "layer": int(sae_job["layer"]), "sae_run": sae_job["run"], "sae_arch": meta["arch"],
        "sae_trained_on": meta["trained_on"], "n_features": int(enc_c.features.shape[1]), "sae_input": params["sae_input"],
        "exclude": params["exclude"], "pool_excluded": enc_c.pool_excluded, "candidates": str(cand_src["path"]),
        "target": str(targ_src["path"]), "n_candidates": len(candidates), "n_target": len(target),
        "target_ids": json.dumps(target["id"].tolist()), "embedding_model": params.get("embedding_model") or "",
    }
    ds = ranking_dataset(candidates, scores, params["top_n"], params["aggregate"], n_tokens=enc_c.n_tokens,
                         n_active=(enc_c.features > 0).sum(1), prototype=proto, relevant=relevant,
                         attrs={**(attrs or {}), **info})
    _log_summary(ds, methods)
    return ds


def _log_summary(ds: xr.Dataset, methods: list[str]) -> None:
    log.info("ranked %d candidates against %d target samples (%s, %s layer %s, SAE %s, %d features; prototype has %d "
             "active features)", ds.sizes["candidate"], ds.attrs["n_target"], ds.attrs["model"], ds.attrs["hook"],
             ds.attrs["layer"], ds.attrs["sae_run"], ds.attrs["n_features"], int((ds["prototype"] > 0).sum()))
    for m in methods:
        best = ds["text"].values[np.argsort(ds[f"rank_{m}"].values)[:3]]
        prec = f", precision@{ds.attrs['top_n']} {float(ds[f'precision_{m}']):.3f}" if f"precision_{m}" in ds else ""
        log.info("%s%s; top 3: %s", m, prec, " | ".join(str(t)[:60] for t in best))
