"""Build the static explorer of one feature set (rule ``explorer``): :func:`build_explorer`."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mechflow.contracts import EARTH_RADIUS_M
from mechflow.explorer.corpus import CorpusContexts
from mechflow.explorer.sets import FeatureSet, load_set
from mechflow.explorer.site import write_site
from mechflow.explorer.tokens import TokenTable, feature_tokens, token_table
from mechflow.io import load_dataset

__all__ = ["ExplorerSettings", "build_explorer", "region_places", "lisa_classes", "steering_tables", "FEATURE_WORD"]

FEATURE_WORD = {"sae": "feature", "snmf": "factor", "units": "unit"}
#: a basemap source: (region, crs, extent [x0, x1, y0, y1]) -> layers [{layer, lines}], each line a flat
#: [x0, y0, x1, y1, ...] list in the CRS's units
Basemap = Callable[[str, "str | None", Sequence[float]], list[dict]]


def shipped_basemap(region: str, crs: str | None, extent: Sequence[float]) -> list[dict]:
    """Coastlines, borders and admin-1 lines from the data packages setup installs (:mod:`mechflow.spatial.basemap`),
    rounded to whole metres; none without a CRS (the equirectangular fallback has no map to match)."""
    if not crs:
        return []
    from mechflow.spatial.basemap import basemap_layers

    x0, x1, y0, y1 = extent
    layers = basemap_layers(crs, (x0, y0, x1, y1))
    return [{"layer": name, "lines": [np.round(np.asarray(line, dtype=np.float64)).ravel().tolist() for line in lines]}
            for name, lines in layers.items() if lines]


@dataclass(frozen=True)
class ExplorerSettings:
    """contexts: top contexts per feature (placename prompts, and held-out corpus windows where the set has them);
    logit_tokens: promoted / suppressed tokens shown; neighbors: nearest features by decoder cosine; bins: histogram
    bins; chunk_size: features per lazily loaded data file; corpus_before / corpus_after: tokens shown before and
    after a corpus context's largest activation."""

    contexts: int = 10
    logit_tokens: int = 10
    neighbors: int = 8
    bins: int = 24
    chunk_size: int = 64
    corpus_before: int = 12
    corpus_after: int = 4

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ExplorerSettings:
        return cls(**{k: int(params[k]) for k in ("contexts", "logit_tokens", "neighbors", "bins", "chunk_size") if k in params})


@dataclass
class Logits:
    """Promoted / suppressed tokens of every feature ([feature, k] token strings and logits), or why there are none."""

    up: list[list[tuple[str, float]]] | None = None
    down: list[list[tuple[str, float]]] | None = None
    note: str = ""


@dataclass
class Inputs:
    """What :func:`build_explorer` reads besides the feature set (paths; ``lisa``, ``steering`` and the corpus optional):
    ``corpus_shards``, ``corpus_windows``: the held-out token-activation shards of an SAE trained on a text corpus at
    its hook and layer, and the corpus's windows file (:mod:`mechflow.explorer.corpus`)."""

    tokens: str
    moran: str
    lisa: str | None = None
    steering: list[str] = field(default_factory=list)
    corpus_shards: list[str] = field(default_factory=list)
    corpus_windows: str | None = None


def _project(lon: np.ndarray, lat: np.ndarray, crs: str | None) -> tuple[np.ndarray, str | None]:
    if crs:
        from mechflow.spatial.weights import project

        try:
            return project(lon, lat, crs), crs
        except ValueError:
            pass
    lat0 = np.radians(np.nanmean(lat))  # equirectangular at the region's mean latitude, metres (as the report)
    return np.column_stack([np.radians(lon) * np.cos(lat0), np.radians(lat)]) * EARTH_RADIUS_M, None


def region_places(places: Mapping[str, np.ndarray], crs: Mapping[str, str], basemap: Basemap | None = None) -> dict:
    """The places of every region projected in the region's CRS: ``regions`` [{name, crs, extent, basemap}],
    per prompt ``text``, ``region`` (index into regions), ``x``, ``y`` (metres, rounded to 1 m)."""
    region = np.asarray(places["region"]).astype(str)
    names = sorted(set(region.tolist()))
    x = np.zeros(region.size)
    y = np.zeros(region.size)
    regions = []
    for r in names:
        m = region == r
        xy, used = _project(np.asarray(places["longitude"], float)[m], np.asarray(places["latitude"], float)[m], crs.get(r))
        x[m], y[m] = xy[:, 0], xy[:, 1]
        extent = [float(xy[:, 0].min()), float(xy[:, 0].max()), float(xy[:, 1].min()), float(xy[:, 1].max())]
        lines = basemap(r, used, extent) if basemap is not None else []
        regions.append({"name": r, "crs": used, "extent": extent, "basemap": lines})
    index = {r: i for i, r in enumerate(names)}
    return {"regions": regions, "text": np.asarray(places["text"]).astype(str).tolist(),
            "region": [index[r] for r in region.tolist()], "x": np.round(x).tolist(), "y": np.round(y).tolist()}


def _feature_dim(da: xr.DataArray) -> str:
    return next(d for d in ("feature", "factor", "unit") if d in da.dims)


def moran_columns(moran: xr.Dataset, n: int) -> dict[str, np.ndarray]:
    """Moran's I per region [feature] by ``I_<region>``."""
    I = moran["I"]
    dim = _feature_dim(I)
    if I.sizes[dim] != n:
        raise ValueError(f"the Moran file has {I.sizes[dim]} features, the feature set {n}")
    return {f"I_{r}": I.sel(region=r).transpose(dim).values.astype(np.float64) for r in moran["region"].values.astype(str)}


def lisa_classes(lisa: xr.Dataset | None, n: int) -> tuple[dict[str, np.ndarray], dict[int, dict[str, dict]]]:
    """Counts of significant LISA places per region [feature] (NaN where LISA was not computed), and for each
    feature with LISA its significant places by region: {feature: {region: {idx, q}}} (q: 1 HH, 2 LH, 3 LL, 4 HL)."""
    counts: dict[str, np.ndarray] = {}
    classes: dict[int, dict[str, dict]] = {}
    if lisa is None or "q" not in lisa:  # lisa_top_n 0: the spatial step writes a file of regions only
        return counts, classes
    dim = _feature_dim(lisa["q"])
    feats = lisa[dim].values.astype(int)
    q = lisa["q"].transpose("region", "prompt", dim).values
    sig = lisa["significant"].transpose("region", "prompt", dim).values.astype(bool)
    prompt_region = lisa["prompt_region"].values.astype(str) if "prompt_region" in lisa else None
    for ri, r in enumerate(lisa["region"].values.astype(str)):
        col = np.full(n, np.nan)
        in_region = prompt_region == r if prompt_region is not None else np.ones(q.shape[1], bool)
        for j, f in enumerate(feats):
            keep = sig[ri, :, j] & in_region
            col[f] = keep.sum()
            idx = np.flatnonzero(keep)
            classes.setdefault(int(f), {})[r] = {"idx": idx.tolist(), "q": q[ri, idx, j].astype(int).tolist()}
        counts[f"lisa_{r}"] = col
    return counts, classes


def steering_tables(paths: Sequence[str], run: str | None, layer: int) -> dict[int, list[dict]]:
    """Steering files whose vector is one of this set's features (attrs ``run``, ``feature``, ``layer``): per feature,
    a table of the mean effect per scale (KL, delta log-odds, entropy) and the greedy generation where there is one."""
    out: dict[int, list[dict]] = {}
    for p in paths:
        ds = load_dataset(p)
        a = ds.attrs
        if "feature" not in a or str(a.get("run")) != str(run) or int(a.get("layer", layer)) != int(layer):
            continue
        names = [v for v in ("kl", "delta_log_odds", "entropy") if v in ds and "scale" in ds[v].dims]
        scales = ds["scale"].values
        cols = ["scale", *[f"mean {v}" for v in names]] + (["generation"] if "generation" in ds else [])
        rows = []
        for i, s in enumerate(scales):
            row: list[Any] = [float(s)] + [float(np.nanmean(ds[v].isel(scale=i).values)) for v in names]
            if "generation" in ds:
                g = ds["generation"].isel(scale=i).values
                row.append(str(g.ravel()[0]) if g.size else "")
            rows.append(row)
        out.setdefault(int(a["feature"]), []).append(
            {"name": str(a.get("name", Path(p).stem)), "note": f"{ds.sizes.get('prompt', 0)} held-out prompts; file {Path(p).name}",
             "columns": cols, "rows": rows})
    return out


def compute_logits(fs: FeatureSet, hook: str, layer: int, model_params: Mapping[str, Any] | None, k: int) -> Logits:
    """Promoted / suppressed tokens of every feature through the model's unembedding (causal LMs only)."""
    if model_params is None:
        return Logits(note="no unembedding: the model is an encoder (no next-token head)")
    import torch

    from mechflow.explorer.directions import logit_tokens, to_residual
    from mechflow.lens.model import load_causal_lm

    model, tokenizer, unembed, _ = load_causal_lm(model_params)
    up_t, down_t = [], []
    with torch.no_grad():
        n = fs.n_features
        for lo in range(0, n, 1024):
            hi = min(n, lo + 1024)
            if fs.directions is None:
                d = torch.zeros(hi - lo, n)  # raw units: the unit basis
                d[torch.arange(hi - lo), torch.arange(lo, hi)] = 1.0
            else:
                d = torch.as_tensor(fs.directions[lo:hi])
            resid = to_residual(model, hook, layer, d.float())
            ui, uv, di, dv = logit_tokens(unembed, resid, k)
            up_t += [[(tokenizer.decode([int(t)]), float(v)) for t, v in zip(ii, vv)] for ii, vv in zip(ui, uv)]
            down_t += [[(tokenizer.decode([int(t)]), float(v)) for t, v in zip(ii, vv)] for ii, vv in zip(di, dv)]
    return Logits(up_t, down_t, "")


def _round(a: np.ndarray, digits: int = 4) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(a, dtype=np.float64)]


def compute_corpus(fs: FeatureSet, inputs: Inputs, corpus: Mapping[str, Any] | None, s: ExplorerSettings
                   ) -> CorpusContexts | None:
    """Top held-out corpus windows of every feature of an SAE trained on a text corpus (``corpus``: ``rows``, the cap on
    held-out tokens read, and ``model``, whose tokenizer decodes the windows), else None."""
    if fs.kind != "sae" or not inputs.corpus_shards or corpus is None:
        return None
    if not inputs.corpus_windows:
        raise ValueError("corpus contexts need the corpus's windows file (Inputs.corpus_windows)")
    from mechflow.explorer.corpus import corpus_contexts
    from mechflow.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(corpus["model"]["spec"]))

    def decode(ids: Sequence[int]) -> list[str]:
        return [tokenizer.decode([int(i)]) for i in ids]

    rows = corpus.get("rows")
    return corpus_contexts(inputs.corpus_shards, inputs.corpus_windows, fs.encode, fs.n_features, decode, k=s.contexts,
                           max_rows=None if rows is None else int(rows), before=s.corpus_before, after=s.corpus_after)


def _heads_page(heads: Mapping[str, np.ndarray] | None, f: int) -> dict | None:
    if heads is None:
        return None
    return {"share": _round(heads["head_share"][f], 3), "direct": _round(heads["head_direct"][f], 3)}


def _pages(fs: FeatureSet, table: TokenTable, moran_cols: dict[str, np.ndarray], lisa: dict[int, dict],
           near: tuple[np.ndarray, np.ndarray] | None, logits: Logits, steer: dict[int, list[dict]],
           s: ExplorerSettings, stats: dict[str, np.ndarray], corpus: CorpusContexts | None = None
           ) -> Iterator[tuple[int, dict]]:
    dense = fs.kind != "sae"
    for f in range(fs.n_features):
        ft = feature_tokens(table, f, s.contexts, s.bins)
        stats["density"][f], stats["max"][f] = ft.density, ft.max
        col = fs.values[:, f]
        if dense:
            vmap = {"dense": True, "val": _round(col, 3)}
        else:
            idx = np.flatnonzero(col)
            vmap = {"dense": False, "idx": idx.tolist(), "val": _round(col[idx], 3)}
        page = {"I": {k[2:]: v[f] for k, v in moran_cols.items()}, "density": ft.density, "max": ft.max,
                "hist": ft.hist, "contexts": ft.contexts, "map": vmap, "lisa": lisa.get(f)}
        if near is not None:
            page["near"] = [[int(i), round(float(c), 4)] for i, c in zip(near[0][f], near[1][f])]
        if logits.up is not None:
            page["up"], page["down"] = logits.up[f], logits.down[f]
        if f in steer:
            page["steer"] = steer[f]
        if corpus is not None:
            page["corpus"], page["corpus_density"] = corpus.contexts[f], float(corpus.density[f])
        if fs.heads is not None:
            page["heads"] = _heads_page(fs.heads, f)
        yield f, page


def build_explorer(out: str | Path, source: str, features: str | Path, layer: int, inputs: Inputs,
                   crs: Mapping[str, str], settings: ExplorerSettings = ExplorerSettings(),
                   sae_dir: str | Path | None = None, model_params: Mapping[str, Any] | None = None,
                   labels: Mapping[str, str] | None = None, basemap: Basemap | None = None,
                   corpus: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the explorer of feature set ``source`` (``units``, ``sae-<run>``, ``snmf-<run>``) into the folder ``out``.

    ``features``: the set's file (activations / features.nc / semi-NMF file); ``inputs``: the token file of the
    prompts at the set's hook, the spatial step's Moran (and LISA) files, steering files of the model;
    ``model_params``: the model's settings when it is a causal LM (promoted / suppressed tokens), else None;
    ``labels``: dataset, model, hook for the title; ``crs``: region -> CRS over the Moran file's ``crs`` attr;
    ``corpus``: for an SAE trained on a text corpus, ``name``, ``rows`` (held-out tokens read at most, None: all) and
    ``model`` (the model's settings: its tokenizer) with ``inputs.corpus_shards`` / ``corpus_windows``: each feature's
    top held-out corpus windows beside its placename contexts.
    The folder is written next to ``out`` and renamed into place.
    Returns sizes (bytes), file count and seconds.
    """
    t0 = time.perf_counter()
    out = Path(out)
    labels = dict(labels or {})
    kind, _, run = source.partition("-")
    fs = load_set(source, features, layer, sae_dir)
    n = fs.n_features
    moran = load_dataset(inputs.moran)
    moran_cols = moran_columns(moran, n)
    # the CRS each region was tested in (the spatial step's attrs: presets included), the study's map over it
    crs = {**json.loads(moran.attrs.get("crs") or "{}"), **crs}
    lisa_counts, lisa = lisa_classes(load_dataset(inputs.lisa) if inputs.lisa else None, n)
    table = token_table(inputs.tokens, layer, fs, fs.values.shape[0])
    near = None
    if fs.directions is not None and settings.neighbors > 0:
        from mechflow.explorer.directions import nearest

        near = nearest(fs.directions, settings.neighbors)
    hook = labels.get("hook", str(fs.attrs.get("hook", "")))
    logits = compute_logits(fs, hook, layer, model_params, settings.logit_tokens)
    steer = steering_tables(inputs.steering, run or None, layer)
    corpus_top = compute_corpus(fs, inputs, corpus, settings)
    regions = sorted(r[2:] for r in moran_cols)
    stats = {"density": np.zeros(n), "max": np.zeros(n)}
    word = FEATURE_WORD[kind]
    title = f"{source} \u00b7 {labels.get('dataset', '')} / {labels.get('model', '')} \u00b7 {hook} layer {layer}"
    meta = {"title": title, "subtitle": f"{n} {word}s, {fs.values.shape[0]} places in {len(regions)} regions",
            "n_features": n, "regions": regions, "kind": kind, "feature_word": word, "note": fs.note,
            "contexts_from": "placename prompts, every token (rule extract_tokens)",
            "logits_note": logits.note or "", "source": source, "layer": layer, **labels}
    if corpus_top is not None:
        info = corpus_top.info
        meta["corpus_from"] = (f"held-out windows of corpus {(corpus or {}).get('name') or info['corpus']}, never trained "
                               f"on: {info['rows']:,} of its {info['held_out_rows']:,} held-out tokens read "
                               f"({info['shards_read']} of {info['shards']} shards; explorer.corpus_rows)")
    if fs.heads is not None:
        meta["n_heads"] = int(fs.heads["head_share"].shape[1])
    pages = _pages(fs, table, moran_cols, lisa, near, logits, steer, settings, stats, corpus_top)

    def index() -> dict[str, Any]:
        columns = [{"key": "feature", "label": word, "int": True}]
        columns += [{"key": f"I_{r}", "label": f"Moran's I {r}", "help": f"Moran's I of the pooled values among places of {r}"}
                    for r in regions]
        columns += [{"key": f"lisa_{r}", "label": f"LISA {r}", "int": True,
                     "help": f"significant LISA places in {r} (only for the features the spatial step ran LISA on)"}
                    for r in regions if f"lisa_{r}" in lisa_counts]
        columns += [{"key": "density", "label": "density", "help": "fraction of the prompts' tokens where the value is > 0"},
                    {"key": "max", "label": "max", "help": "largest value at any token"}]
        rows: dict[str, Any] = {"feature": list(range(n))}
        if corpus_top is not None:
            columns.append({"key": "corpus_density", "label": "corpus density",
                            "help": "fraction of the held-out corpus tokens read where the feature is > 0"})
            rows["corpus_density"] = _round(corpus_top.density)
        if fs.heads is not None:
            share = fs.heads["head_share"]
            top = np.where(np.isfinite(share).any(1), np.nanargmax(np.nan_to_num(share, nan=-1.0), axis=1), -1)
            columns += [{"key": "top_head", "label": "top head", "int": True,
                         "help": "the head with the largest share of the decoder norm (attn_z)"},
                        {"key": "top_head_share", "label": "top head share", "help": "that head's share of the decoder norm"}]
            rows["top_head"] = [None if t < 0 else int(t) for t in top]
            rows["top_head_share"] = [None if t < 0 else float(f"{share[i, t]:.4g}") for i, t in enumerate(top)]
        rows.update({k: _round(v) for k, v in moran_cols.items()})
        rows.update({k: [None if np.isnan(x) else int(x) for x in v] for k, v in lisa_counts.items()})
        rows.update(density=_round(stats["density"]), max=_round(stats["max"]))
        return {"meta": meta, "columns": columns, "rows": rows}

    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    sizes = write_site(tmp, pages, settings.chunk_size, index, region_places(fs.places, crs, basemap))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"bytes": total, "files": sum(1 for p in out.rglob("*") if p.is_file()), "seconds": time.perf_counter() - t0,
            "n_features": n, **sizes}
