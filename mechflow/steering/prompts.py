"""The prompts of a steering run: the held-out split, the two training sets of a difference of means, the
prompts the effect is measured on.

One seeded split of the prompt set, stratified by region (:func:`heldout_mask`), serves every vector of a
study: a difference of means averages *training* prompts only, and the effect is measured on *held-out*
prompts, so no prompt the vector was made from is ever scored. A side of a difference of means is a region
of the prompt set (its training prompts, rendered with an optional template over the prompt file's
variables, e.g. ``"{name} is a town in"``) or a CSV file with a ``text`` column (every row is training).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["heldout_mask", "render", "template_fields", "is_csv", "side_texts", "sample", "eval_rows", "describe_split"]


def is_csv(side: str) -> bool:
    """Whether a side of a difference of means names a CSV file (else: a region of the prompt set)."""
    return str(side).lower().endswith(".csv")


def template_fields(template: str) -> set[str]:
    """Field names of a ``str.format`` template (ValueError on a malformed one or a positional field)."""
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if any(f == "" or f.isdigit() for f in fields):
        raise ValueError(f"template {template!r} has a positional field ({{}} or {{0}}); name it, e.g. {{name}}")
    return {f.split(".")[0].split("[")[0] for f in fields}


def heldout_mask(regions: np.ndarray, holdout: float, seed: int) -> np.ndarray:
    """[n] bool: ``round(holdout * n_r)`` prompts of each region r held out (at least one where the region has two
    or more), drawn with ``seed``; the rest are training prompts."""
    regions = np.asarray(regions).astype(str)
    rng = np.random.default_rng(seed)
    out = np.zeros(regions.size, dtype=bool)
    for r in sorted(set(regions.tolist())):
        rows = np.flatnonzero(regions == r)
        k = int(round(holdout * rows.size))
        k = min(max(k, 1 if rows.size > 1 else 0), rows.size - 1 if rows.size > 1 else 0)
        out[rng.permutation(rows)[:k]] = True
    return out


def render(prompts: xr.Dataset, rows: np.ndarray, template: str | None) -> list[str]:
    """Texts of prompts ``rows``: the prompt set's own ``text``, or ``template`` filled from its per-prompt variables."""
    if template is None:
        return [str(t) for t in prompts["text"].values[rows]]
    fields = template_fields(template)
    lacking = sorted(f for f in fields if f not in prompts.variables or prompts[f].dims != ("prompt",))
    if lacking:
        have = sorted(k for k, v in prompts.variables.items() if v.dims == ("prompt",))
        raise ValueError(f"template {template!r} uses {lacking}, which the prompt set lacks (it has {have})")
    cols = {f: prompts[f].values[rows] for f in fields}
    return [template.format(**{f: _plain(cols[f][i]) for f in fields}) for i in range(len(rows))]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def sample(rows: np.ndarray, at_most: int | None, seed: int) -> np.ndarray:
    """At most ``at_most`` of ``rows`` (a seeded sample, in their order); all when ``at_most`` is None."""
    rows = np.asarray(rows)
    if at_most is None or rows.size <= at_most:
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(rows.size, at_most, replace=False))
    return rows[keep]


def side_texts(side: str, prompts: xr.Dataset, train: np.ndarray, template: str | None, at_most: int | None, seed: int,
               csv: Mapping[str, pd.DataFrame] | None = None) -> tuple[list[str], np.ndarray]:
    """Training texts of one side of a difference of means and their prompt ids (-1 for CSV rows).

    ``side``: a region of ``prompts`` (its prompts where ``train`` [n] is True) or a CSV path (its ``text`` column,
    read by the caller into ``csv[side]``).
    """
    if is_csv(side):
        frame = (csv or {}).get(side)
        if frame is None or "text" not in frame.columns:
            raise ValueError(f"{side}: a CSV side needs a `text` column")
        texts = frame["text"].dropna().astype(str).to_numpy()
        rows = sample(np.arange(texts.size), at_most, seed)
        if rows.size == 0:
            raise ValueError(f"{side}: no prompts")
        return [str(texts[i]) for i in rows], np.full(rows.size, -1, dtype=np.int64)
    regions = prompts["region"].values.astype(str)
    if side not in set(regions.tolist()):
        raise ValueError(f"region {side!r} is not in the prompt set (regions {sorted(set(regions.tolist()))})")
    rows = sample(np.flatnonzero((regions == side) & train), at_most, seed)
    if rows.size == 0:
        raise ValueError(f"region {side!r} has no training prompts")
    return render(prompts, rows, template), prompts["prompt"].values[rows].astype(np.int64)


def eval_rows(prompts: xr.Dataset, heldout: np.ndarray, region: str | None, at_most: int, seed: int,
              exclude_texts: set[str] | frozenset[str] = frozenset(), template: str | None = None) -> np.ndarray:
    """Positions of the prompts the effect is measured on: held-out prompts (of ``region`` when given) whose text is
    not a training text, a seeded sample of at most ``at_most``, in prompt order."""
    keep = np.asarray(heldout, dtype=bool).copy()
    if region is not None:
        regions = prompts["region"].values.astype(str)
        if region not in set(regions.tolist()):
            raise ValueError(f"eval_region {region!r} is not in the prompt set (regions {sorted(set(regions.tolist()))})")
        keep &= regions == region
    rows = np.flatnonzero(keep)
    if exclude_texts and rows.size:
        texts = render(prompts, rows, template)
        rows = rows[[t not in exclude_texts for t in texts]]
    rows = sample(rows, at_most, seed)
    if rows.size == 0:
        raise ValueError("no held-out prompts to measure the effect on" + (f" in region {region!r}" if region else ""))
    return rows


def describe_split(n_train: Mapping[str, int], n_eval: int, holdout: float, seed: int, eval_from: str) -> dict[str, Any]:
    """Attrs recording the split (numbers and how it was drawn)."""
    return {"holdout": float(holdout), "split_seed": int(seed), "eval_from": eval_from, "n_eval": int(n_eval),
            **{f"n_train_{k}": int(v) for k, v in n_train.items()}}
