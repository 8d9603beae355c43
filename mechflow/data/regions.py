"""Region presets (GB, IT, NYMETRO): GeoNames filters, admin-1 name tables and projected CRSs."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any


@cache
def _load_presets() -> dict[str, dict[str, Any]]:
    raw = json.loads(files("mechflow.data").joinpath("regions.json").read_text(encoding="utf-8"))
    return {k: v for k, v in raw.items() if not k.startswith("_")}


REGION_PRESETS: dict[str, dict[str, Any]] = _load_presets()
#: projected CRS (metres) of each preset region; regions.json is the one source
CRS_PRESETS: dict[str, str] = {name: preset["crs"] for name, preset in REGION_PRESETS.items()}


def region_crs(region: str, overrides: dict[str, str] | None = None) -> str:
    """Projected CRS (metres) for a region: a config override, else the preset's.

    Raises ValueError for a region with neither.
    """
    if overrides and region in overrides:
        return overrides[region]
    if region in CRS_PRESETS:
        return CRS_PRESETS[region]
    raise ValueError(
        f"no projected CRS known for region {region!r}: add it under spatial.crs in the config "
        f"(known presets: {', '.join(sorted(REGION_PRESETS))})"
    )
