"""Summaries of ``moran.nc`` files, vectorised over features: significance after FDR and top features."""

from __future__ import annotations

import numpy as np
import xarray as xr

from mechflow.report.loaders import feature_dim

ALPHA = 0.05


def _q_values(ds: xr.Dataset) -> tuple[xr.DataArray, str]:
    """The FDR q-values of the real statistic and the name of their source variable.

    ``q_greater`` (BH over features per region of the one-sided permutation p ``p_greater``) when
    stored; files without permutations fall back to ``q_bh_norm`` (BH of the analytical ``p_norm``);
    older files that only have ``q_bh`` (BH of esda's folded ``p_sim``) are read as such and named
    so in captions.
    """
    perms = int(ds.attrs.get("permutations", 0) or 0)
    if "q_greater" in ds and perms > 0:
        return ds["q_greater"], "q_greater"
    if "q_bh" in ds and perms > 0:  # older files: BH of the folded p_sim
        return ds["q_bh"], "q_bh (folded p_sim)"
    if "q_bh_norm" in ds:
        return ds["q_bh_norm"], "q_bh_norm"
    from mechflow.spatial import fdr_bh  # compute from raw p-values when only those were stored

    p = ds["p_greater"] if ("p_greater" in ds and perms > 0) else ds["p_norm"]
    p = p.transpose(..., feature_dim(ds))
    return p.copy(data=fdr_bh(p.values)), f"BH({p.name})"


def significant_positive(ds: xr.Dataset, alpha: float = ALPHA) -> xr.DataArray:
    """Boolean ``[region, feature]``: q < alpha (Benjamini-Hochberg over features) and I > E[I]."""
    q, _ = _q_values(ds)
    return (q < alpha) & (ds["I"] > ds["EI"])


def significant_positive_control(ds: xr.Dataset, alpha: float = ALPHA) -> xr.DataArray | None:
    """The same for the shuffled-coordinates control (``I_shuffled``, ``q_greater_shuffled``: the same
    one-sided permutation test as the real data), if stored; None for files without it (older files
    tested the control differently, so their control is not compared)."""
    if "I_shuffled" not in ds or "q_greater_shuffled" not in ds:
        return None
    return (ds["q_greater_shuffled"] < alpha) & (ds["I_shuffled"] > ds["EI"])


def q_source(ds: xr.Dataset) -> str:
    """Name of the variable the significance test used (for captions)."""
    return _q_values(ds)[1]


def region_summary(ds: xr.Dataset, region: str, top_n: int = 5) -> dict:
    """Per-region numbers of one moran file: n features, median / max I, fraction significant
    (real and shuffled control), and the top ``top_n`` features by I as ``[(id, I, significant)]``."""
    r = ds.sel(region=region)
    fdim = feature_dim(ds)
    I = r["I"].values.astype(np.float64)
    sig = significant_positive(ds).sel(region=region).values
    ctrl = significant_positive_control(ds)
    valid = np.isfinite(I)
    n_valid = int(valid.sum())
    order = np.argsort(np.where(valid, -I, np.inf), kind="stable")[: min(top_n, n_valid)]
    ids = r[fdim].values
    out = {
        "n": int(I.size),
        "n_valid": n_valid,
        "median_I": float(np.median(I[valid])) if n_valid else np.nan,
        "max_I": float(I[valid].max()) if n_valid else np.nan,
        "frac_sig": float(sig[valid].mean()) if n_valid else np.nan,
        "frac_sig_control": np.nan,
        "median_I_control": np.nan,
        "top": [(ids[i].item(), float(I[i]), bool(sig[i])) for i in order],
    }
    if ctrl is not None:
        c = ctrl.sel(region=region).values
        Ic = r["I_shuffled"].values.astype(np.float64)
        ok = np.isfinite(Ic)
        out["frac_sig_control"] = float(c[ok].mean()) if ok.any() else np.nan
        out["median_I_control"] = float(np.median(Ic[ok])) if ok.any() else np.nan
    return out


def top_features(ds: xr.Dataset, n: int, region: str | None = None) -> list:
    """Ids of the ``n`` features with the largest I in ``region`` (or the largest mean I over regions)."""
    fdim = feature_dim(ds)
    I = ds["I"].sel(region=region) if region is not None else ds["I"].mean("region", skipna=True)
    vals = np.asarray(I.values, dtype=np.float64)
    vals = np.where(np.isfinite(vals), vals, -np.inf)
    order = np.argsort(-vals, kind="stable")
    order = order[np.isfinite(vals[order])][:n]
    return [ds[fdim].values[i].item() for i in order]
