"""The report step: one HTML page of every result the study's manifest lists."""

from __future__ import annotations

from typing import Any

from mechflow.study import RESOURCE_KEYS, SAE_RUN_PLACEMENT, canonical

__all__ = ["study_settings"]


def study_settings(study: dict[str, Any]) -> dict[str, Any]:
    """The whole study without resource settings (shown in the report; threads or memory change no result), and an
    SAE run's hook or level only where it is not the section's (the resolution fills both into every run)."""
    out = {name: section if name in ("datasets", "models") or not isinstance(section, dict)
           else {k: v for k, v in section.items() if k not in RESOURCE_KEYS}
           for name, section in study.items()}
    if isinstance(out.get("sae"), dict) and out["sae"].get("runs"):
        sae = out["sae"]
        sae["runs"] = {name: {k: v for k, v in run.items() if k not in SAE_RUN_PLACEMENT or v != sae.get(k)}
                       for name, run in sae["runs"].items()}
    return canonical(out)
