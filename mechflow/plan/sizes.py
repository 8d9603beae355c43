"""The expected size of every result file, from the resolved study and facts read without running
anything: every prompt set built (as the pre-run checks do), each model's layers and hook widths from
``config.json`` or the GGUF header (no weights loaded). Pooled activations are exact (prompts x layers x
units x 4 bytes, twice with ``extract.keep_sink``), token files an upper bound (prompts x
``extract.max_length`` tokens), SAE weights and features, semi-NMF factors, spatial outputs exact up to
the small coordinates and attributes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mechflow.contracts import RESULT_PATHS
from mechflow.facts import StudyFacts
from mechflow.spatial.analysis import CONTROL_VARS
from mechflow.spatial.datasets import MORAN_VARS
from mechflow.steps.extract import n_extracted

__all__ = ["FileSize", "NETCDF_OVERHEAD", "THRESHOLD_ARCHS", "match_result", "activation_bytes", "token_bytes",
           "n_features", "spatial_controls", "file_size"]

#: SAE architectures whose weights file holds a ``threshold`` [d_sae]
THRESHOLD_ARCHS = ("jumprelu", "batchtopk", "matryoshka", "gba")

#: what a netCDF file holds beyond its arrays: HDF5 structure, attributes (provenance), small coordinates
NETCDF_OVERHEAD = 16_000


@dataclass(frozen=True)
class FileSize:
    """An intermediate: its kind (a :data:`mechflow.contracts.RESULT_PATHS` key, ``sae_dir/<file>`` for an
    SAE run's files), path, expected bytes (None: small, not estimated) and whether that is an upper bound."""

    kind: str
    path: str
    bytes: int | None
    bound: bool = False


def _kind_patterns() -> list[tuple[str, re.Pattern]]:
    """(kind, regex with named wildcards) of every result path, the most specific first."""
    out = []
    for kind, template in sorted(RESULT_PATHS.items(), key=lambda item: -len(item[1])):
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        tail = r"/(?P<file>[^/]+)" if kind == "sae_dir" else ""
        out.append((kind, re.compile(f"(?:^|/){pattern}{tail}$")))
    return out


_PATTERNS = _kind_patterns()


def match_result(path: str) -> tuple[str, dict[str, str]] | None:
    """(kind, wildcards) of a result path below any results root; SAE run files are ``sae_dir/<file>``."""
    for kind, pattern in _PATTERNS:
        m = pattern.search(path)
        if m:
            wc = {k: v for k, v in m.groupdict().items() if v is not None}
            return (f"{kind}/{wc.pop('file')}" if kind == "sae_dir" else kind), wc
    return None


def _keeps_sink(config: dict[str, Any]) -> bool:
    ex = config["extract"]
    return bool(ex["keep_sink"]) and ex["pooling"] in ("mean", "max") and ex["exclude"] != "none"


def activation_bytes(config: dict[str, Any], facts: StudyFacts, dataset: str, model: str, hook: str) -> int | None:
    """``activations`` [prompt, layer, unit] float32 (and ``sink``, the same shape, with ``keep_sink``)."""
    layers, width = n_extracted(config, facts, model, hook), facts.models[model].widths.get(hook)
    if layers is None or width is None:
        return None
    return facts.n(dataset) * layers * width * 4 * (2 if _keeps_sink(config) else 1)


def token_bytes(config: dict[str, Any], facts: StudyFacts, dataset: str, model: str, hook: str) -> int | None:
    """Upper bound of a token file: every prompt at ``extract.max_length`` tokens, [token, layer, unit]
    float32, plus per-token coordinates (the prompt's, its position and token string)."""
    layers, width = n_extracted(config, facts, model, hook), facts.models[model].widths.get(hook)
    if layers is None or width is None:
        return None
    n, max_len = facts.n(dataset), int(config["extract"]["max_length"])
    per_prompt_coords = facts.prompt_bytes[dataset] // max(n, 1) + 3 * 8 + 64
    return n * max_len * (layers * width * 4 + per_prompt_coords)


def n_features(config: dict[str, Any], facts: StudyFacts, source: str, model: str, hook: str) -> int | None:
    """Features of a spatial source: the hook's units, an SAE run's ``n_features``, a semi-NMF run's factors."""
    kind, _, run = source.partition("-")
    if kind == "units":
        return facts.models[model].widths.get(hook)
    if kind == "sae":
        return int(config["sae"]["runs"][run]["n_features"])
    return int(config["snmf"]["runs"][run]["n_factors"])


def spatial_controls(config: dict[str, Any], source: str) -> int:
    """How many controls a spatial job computes (each with its :data:`~mechflow.spatial.analysis.CONTROL_VARS`):
    the shuffled control, the residualised one and, for units with a kept sink, the sink's."""
    sp = config["spatial"]
    return int(bool(sp["shuffled_control"])) + int(bool(sp["residualise"])) + int(source == "units" and _keeps_sink(config))


def file_size(kind: str, wc: dict[str, str], config: dict[str, Any], facts: StudyFacts) -> tuple[int | None, bool]:
    """Expected bytes of one result (None: small, not estimated) and whether that is an upper bound."""
    d, m, hook = wc.get("dataset"), wc.get("model"), wc.get("hook")
    if kind == "prompts":
        return facts.prompt_bytes[d], False
    if d is None or d not in facts.regions:
        return None, False
    n, prompts = facts.n(d), facts.prompt_bytes[d]
    bound = config["extract"]["keep_sink"] and config["extract"]["exclude"] == "auto"  # a sink only if the tokenizer has one
    if kind in ("activations", "shard"):
        data = activation_bytes(config, facts, d, m, hook)
        if data is None:
            return None, False
        total = data + prompts + 8 * n
        return (total // int(config["extract"]["shards"]) if kind == "shard" else total), bound
    if kind == "tokens":
        return token_bytes(config, facts, d, m, hook), True
    if kind.startswith("sae_dir/"):
        run = config["sae"]["runs"][wc["run"]]
        F, width = int(run["n_features"]), facts.models[m].widths.get(hook)
        name = kind.partition("/")[2]
        if name == "sae_weights.safetensors":
            if width is None:
                return None, False
            return 4 * (2 * width * F + F + width + (F if run["arch"] in THRESHOLD_ARCHS else 0)), False
        if name == "features.nc":
            return 4 * n * F + prompts + 40 * n, False
        if name == "training.nc":
            return 8 * 24 * (int(run["steps"]) // int(run["log_every"]) + 2), True
        return None, False
    if kind == "snmf":
        run = config["snmf"]["runs"][wc["run"]]
        k, width = int(run["n_factors"]), facts.models[m].widths.get(hook)
        if width is None:
            return None, False
        size = 8 * (width * k + n * k + int(run["max_iter"]) + 1) + prompts
        if config["snmf"]["level"] == "tokens":
            size += 8 * k * n * int(config["extract"]["max_length"])
            return size, True
        return size, False
    if kind in ("moran", "lisa"):
        F, R = n_features(config, facts, wc["source"], m, hook), len(facts.regions[d])
        if F is None:
            return None, False
        if kind == "moran":
            per = len(MORAN_VARS) + spatial_controls(config, wc["source"]) * len(CONTROL_VARS)
            return 8 * R * F * per + 24 * R + 8 * F, False
        top = int(config["spatial"]["lisa_top_n"])
        U = min(R * top, F)
        return (R * n * U * 34 + R * U * 9 + prompts if top else 0), top > 0
    return None, False
