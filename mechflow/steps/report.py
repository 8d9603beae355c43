"""The report step: one HTML page of every result the study's manifest lists."""

from __future__ import annotations

from typing import Any

from mechflow.study import RESOURCE_KEYS, canonical

__all__ = ["study_settings"]


def study_settings(study: dict[str, Any]) -> dict[str, Any]:
    """The whole study without resource settings (shown in the report; threads or memory change no result)."""
    return canonical({
        name: section if name in ("datasets", "models") or not isinstance(section, dict)
        else {k: v for k, v in section.items() if k not in RESOURCE_KEYS}
        for name, section in study.items()
    })
