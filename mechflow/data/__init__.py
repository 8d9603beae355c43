"""Prompt sets: placenames from GeoNames, or bring-your-own CSV / xarray files.

Every source produces the same xarray Dataset (the ``prompts/{dataset}.nc`` contract):
dim ``prompt``; ``text`` (str), ``latitude``, ``longitude`` (float64, WGS84 degrees),
``region`` (str), ``place_id`` (int64, GeoNames id where known, else -1).
"""

from mechflow.data.prompts import PromptSetError, build_prompts, validate_prompts
from mechflow.data.regions import REGION_PRESETS, region_crs

__all__ = ["PromptSetError", "build_prompts", "validate_prompts", "REGION_PRESETS", "region_crs"]
