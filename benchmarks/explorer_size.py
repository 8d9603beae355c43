"""Size and build time of the static feature explorer.

Synthetic (default): a top-k SAE of ``--features`` features (random init, d_in ``--d``) over ``--places`` placename
prompts of ``--tokens`` tokens each in GB and NYMETRO, token activations drawn at random, Moran's I drawn at
random (the spatial step's output is an input, not measured here), no model (no promoted tokens)::

    .venv/bin/python benchmarks/explorer_size.py --features 16384

A built study: the explorer folders under a results root, their size and the rule's benchmark time::

    .venv/bin/python benchmarks/explorer_size.py --results results/default
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

BOXES = {"GB": (-4.0, 0.5, 50.5, 55.0), "NYMETRO": (-74.5, -73.3, 40.4, 41.2)}
CRS = {"GB": "EPSG:27700", "NYMETRO": "EPSG:32618"}


def synthetic(features: int, d: int, places: int, tokens: int, k: int, out: Path) -> dict:
    import torch

    from mechflow.explorer.build import ExplorerSettings, Inputs, build_explorer, shipped_basemap
    from mechflow.io import write_dataset
    from mechflow.sae.archs import build_sae
    from mechflow.sae.export import save_sae

    rng = np.random.default_rng(0)
    work = out / "inputs"
    regions = np.repeat(list(BOXES), places // 2)
    n = regions.size
    lon = np.array([rng.uniform(*BOXES[r][:2]) for r in regions])
    lat = np.array([rng.uniform(*BOXES[r][2:]) for r in regions])
    texts = np.array([f"place{i} , region" for i in range(n)])
    prompt = np.repeat(np.arange(n), tokens)
    position = np.tile(np.arange(tokens), n)
    acts = rng.normal(size=(prompt.size, 1, d)).astype(np.float32)
    tok = xr.Dataset({"activations": (("token", "layer", "unit"), acts)},
                     coords={"token": np.arange(prompt.size), "layer": [0], "unit": np.arange(d), "prompt_index": ("token", prompt),
                             "position": ("token", position), "token_str": ("token", [f"t{p % 97}" for p in range(prompt.size)]),
                             "excluded": ("token", position == 0)})
    write_dataset(tok, work / "tokens.nc")
    sae = build_sae("topk", d, features, k)
    sae.init_weights(torch.Generator().manual_seed(0))
    save_sae(sae, work / "sae")
    with torch.no_grad():
        feats = sae.encode(torch.as_tensor(acts[:, 0].reshape(n, tokens, d)[:, 1:].mean(1))).numpy()
    coords = {"prompt": np.arange(n), "text": ("prompt", texts), "latitude": ("prompt", lat), "longitude": ("prompt", lon),
              "region": ("prompt", regions)}
    write_dataset(xr.Dataset({"features": (("prompt", "feature"), feats)}, coords={**coords, "feature": np.arange(features)}),
                  work / "sae" / "features.nc")
    write_dataset(xr.Dataset({"I": (("region", "feature"), rng.normal(0, 0.1, (2, features)))},
                             coords={"region": list(BOXES), "feature": np.arange(features)}), work / "moran.nc")
    t0 = time.perf_counter()
    info = build_explorer(out / "explorer", "sae-synthetic", work / "sae" / "features.nc", 0,
                          Inputs(tokens=str(work / "tokens.nc"), moran=str(work / "moran.nc")), CRS, ExplorerSettings(),
                          sae_dir=work / "sae", labels={"dataset": "synthetic", "model": "none", "hook": "resid"},
                          basemap=shipped_basemap)
    info["wall_seconds"] = time.perf_counter() - t0
    return {"features": features, "d_in": d, "n_places": n, "n_tokens": int(prompt.size), "k": k, **info}


def built(results: Path) -> list[dict]:
    out = []
    for index in sorted(results.glob("explorer/*/*/*/*/*/index.html")):
        folder = index.parent
        rel = folder.relative_to(results / "explorer")
        bench = results / "benchmarks" / "explorer" / rel.parent / f"{rel.name}.tsv"
        seconds = float(bench.read_text().splitlines()[1].split("\t")[0]) if bench.exists() else None
        out.append({"explorer": str(rel), "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
                    "files": sum(1 for p in folder.rglob("*") if p.is_file()), "rule_seconds": seconds})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--places", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--results", type=Path, default=None, help="measure a built study's explorers instead")
    ap.add_argument("--keep", type=Path, default=None, help="write the synthetic explorer here (default: a temp folder)")
    a = ap.parse_args()
    if a.results:
        print(json.dumps(built(a.results), indent=1))
        return
    if a.keep:
        print(json.dumps(synthetic(a.features, a.d, a.places, a.tokens, a.k, a.keep), indent=1))
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(synthetic(a.features, a.d, a.places, a.tokens, a.k, Path(tmp)), indent=1))


if __name__ == "__main__":
    main()
