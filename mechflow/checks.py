"""Checks of a study that the schema cannot express, run before any job (so nothing is deleted first).

Each failure is a :class:`~mechflow.config.ConfigError` with one line naming the config key:
model files and layer counts (read from config.json or the GGUF header, no weights loaded),
devices, every prompt set (built now: empty sets, unreadable files, bad rows), each region's
projected CRS (pyproj), and region sizes against ``spatial.k`` and the probes' folds and blocks,
``snmf`` factors against the number of prompts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from mechflow.config import ConfigError


def check_semantics(config: dict[str, Any], base_dir: str | Path = ".", data_checks: bool = True) -> None:
    """Every pre-job check of a schema-valid, default-filled study (see the module docstring).

    ``data_checks=False`` leaves out those that build the prompt sets (seconds for GeoNames).
    """
    _check_names(config)
    n_layers = _model_layers(config, base_dir)
    _check_devices(config)
    _check_extracted_layers(config, n_layers)
    _check_downstream(config, n_layers)
    _check_lens(config, n_layers, base_dir)
    _check_selection(config, base_dir, data_checks)
    if not data_checks:
        _check_steering(config, n_layers, base_dir)
        return
    regions = _prompt_set_regions(config, base_dir)
    _check_steering(config, n_layers, base_dir, regions)
    if config["spatial"]["enabled"] or config["probes"]["enabled"]:
        _check_crs(config, regions)
        _check_region_sizes(config, regions)
    _check_sample_counts(config, regions, base_dir)


def study_crs(config: dict[str, Any]) -> dict[str, str]:
    """Region -> projected CRS the study declares: inline regions' ``crs``, then ``spatial.crs`` overrides."""
    crs: dict[str, str] = {}
    for ds in config["datasets"].values():
        for region in ds.get("regions", []) if ds.get("source", "geonames") == "geonames" else []:
            if isinstance(region, dict) and region.get("crs"):
                crs[region["name"]] = region["crs"]
    return {**crs, **config["spatial"].get("crs", {})}


def _model_layers(config: dict[str, Any], base_dir: str | Path) -> dict[str, int | None]:
    from mechflow.models import ModelSpecError, count_layers, resolve_model

    n_layers: dict[str, int | None] = {}
    for name, model in config["models"].items():
        try:
            n_layers[name] = count_layers(resolve_model(model["spec"], base_dir))
        except ModelSpecError as e:
            raise ConfigError(f"config error at models.{name}.spec: {e}") from None
    return n_layers


def _check_devices(config: dict[str, Any]) -> None:
    """A CUDA device named anywhere exists (torch is imported only when one is named)."""
    wanted = [(f"models.{m}.device", spec["device"]) for m, spec in config["models"].items()]
    wanted += [(f"sae.runs.{r}.device", run.get("device", "auto")) for r, run in config["sae"]["runs"].items()]
    wanted = [(key, dev) for key, dev in wanted if str(dev).startswith("cuda")]
    if not wanted:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key, dev in wanted:
        index = int(dev.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device (torch.cuda.is_available() is False)"
            raise ConfigError(f"config error at {key}: {dev!r} is not available here: {have}; use 'auto' or 'cpu'")


def _check_extracted_layers(config: dict[str, Any], n_layers: dict[str, int | None]) -> None:
    """extract.layers and extract.hook_layers name layers every model has (negative: from the end)."""
    lists = [("extract.layers", config["extract"]["layers"])]
    lists += [(f"extract.hook_layers.{h}", v) for h, v in config["extract"]["hook_layers"].items()]
    for key, layers in lists:
        if layers == "all":
            continue
        for model, n in n_layers.items():
            bad = [layer for layer in layers if n is not None and not -n <= layer < n]
            if bad:
                raise ConfigError(f"config error at {key}: layer(s) {bad} do not exist in model {model!r} "
                                  f"({n} layers: 0..{n - 1}, or -{n}..-1 from the end)")


def _extracted(config: dict[str, Any], hook: str, n_layers: int | None) -> set[int] | None:
    """Layer indices extracted for ``hook`` (None when unknown)."""
    layers = config["extract"]["hook_layers"].get(hook, config["extract"]["layers"])
    if layers == "all":
        return set(range(n_layers)) if n_layers is not None else None
    if n_layers is None:
        return {layer for layer in layers if layer >= 0} if all(layer >= 0 for layer in layers) else None
    return {layer + n_layers if layer < 0 else layer for layer in layers}


def _check_lens(config: dict[str, Any], n_layers: dict[str, int | None], base_dir: str | Path) -> None:
    """The lens step's prompt sets, models and layers (mechflow.lens.jobs.check_lens; nothing when it is off)."""
    if (config.get("lens") or {}).get("enabled"):
        from mechflow.lens.jobs import check_lens

        check_lens(config, n_layers, base_dir)


def _check_steering(config: dict[str, Any], n_layers: dict[str, int | None], base_dir: str | Path,
                    regions: dict[str, Counter] | None = None) -> None:
    """The steering step's models, vectors, layers, runs and regions (mechflow.steering.jobs.check_steering)."""
    if (config.get("steering") or {}).get("enabled"):
        from mechflow.steering.jobs import check_steering

        check_steering(config, n_layers, base_dir, regions)


def _check_selection(config: dict[str, Any], base_dir: str | Path, data_checks: bool) -> None:
    """Each selection's SAE, sentence encoder and (data checks) CSVs and label (mechflow.selection.jobs.check_selection)."""
    if (config.get("selection") or {}).get("runs"):
        from mechflow.selection.jobs import check_selection

        check_selection(config, base_dir, data_checks)


def _check_names(config: dict[str, Any]) -> None:
    """Prompt sets and models named in restriction lists exist, and every step keeps at least one pair."""
    models, datasets = sorted(config["models"]), sorted(config["datasets"])
    for name, ds in config["datasets"].items():
        for m in ds.get("models") or []:
            if m not in config["models"]:
                raise ConfigError(f"config error at datasets.{name}.models: unknown model {m!r} (have {models})")
    for section in ("spatial", "probes", "sae", "snmf"):
        for d in config[section].get("datasets") or []:
            if d not in config["datasets"]:
                raise ConfigError(f"config error at {section}.datasets: unknown prompt set {d!r} (have {datasets})")
        wanted = config[section].get("models") or models
        chosen = config[section].get("datasets") or datasets
        if config[section].get("datasets") and not any(
            m in (config["datasets"][d].get("models") or models) for d in chosen for m in wanted
        ):
            raise ConfigError(f"config error at {section}.datasets: no model of {section}.models runs on {chosen} "
                              "(see datasets.<name>.models)")


def _check_downstream(config: dict[str, Any], n_layers: dict[str, int | None]) -> None:
    """Models named by analyses exist; analysed layers exist and are extracted."""
    sections = {"spatial": config["spatial"]["hooks"], "probes": config["probes"]["hooks"],
                "sae": [config["sae"]["hook"]], "snmf": [config["snmf"]["hook"]]}
    for section, hooks in sections.items():
        models = config[section].get("models") or list(config["models"])
        for m in models:
            if m not in config["models"]:
                raise ConfigError(f"config error at {section}.models: unknown model {m!r} (have {sorted(config['models'])})")
        if not config[section].get("enabled", True) or (section == "probes" and config["probes"]["layers"] is None) or (
            section in ("sae", "snmf") and not config[section]["runs"]
        ):
            continue
        if section == "spatial" and not config["spatial"]["units"] and not config["sae"]["runs"] and not config["snmf"]["runs"]:
            continue
        for m in models:
            for hook in hooks:
                have = _extracted(config, hook, n_layers[m])
                for layer in config[section]["layers"]:
                    if n_layers[m] is not None and layer >= n_layers[m]:
                        raise ConfigError(f"config error at {section}.layers: layer {layer} does not exist in model "
                                          f"{m!r} ({n_layers[m]} layers)")
                    if have is not None and layer not in have:
                        raise ConfigError(f"config error at {section}.layers: layer {layer} of hook {hook!r} is not "
                                          f"extracted (extract.layers / extract.hook_layers.{hook})")


def _prompt_set_regions(config: dict[str, Any], base_dir: str | Path) -> dict[str, Counter]:
    """Dataset -> places per region, from building every prompt set now (bad files and empty sets fail here)."""
    from mechflow.data.prompts import PromptSetError, build_prompts

    out: dict[str, Counter] = {}
    for name, ds in config["datasets"].items():
        try:
            prompts = build_prompts(ds, base_dir)
        except PromptSetError as e:
            raise ConfigError(f"config error at datasets.{name}: {' '.join(str(e).split())}") from None
        out[name] = Counter(prompts["region"].values.astype(str).tolist())
    return out


def _check_crs(config: dict[str, Any], regions: dict[str, Counter]) -> None:
    """Every region analysed has a projected CRS in metres that pyproj knows."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    from mechflow.data.regions import CRS_PRESETS

    declared = study_crs(config)
    sources = [(f"spatial.crs.{r}", c) for r, c in config["spatial"].get("crs", {}).items()]
    sources += [(f"datasets.{d}.regions.{r['name']}.crs", r["crs"]) for d, ds in config["datasets"].items()
                if ds["source"] == "geonames" for r in ds["regions"] if isinstance(r, dict)]
    for key, code in sources:
        try:
            crs = CRS.from_user_input(code)
        except CRSError as e:
            raise ConfigError(f"config error at {key}: {code!r} is not a CRS pyproj knows ({' '.join(str(e).split())[:120]})") from None
        units = {axis.unit_name for axis in crs.axis_info}
        if not crs.is_projected or units - {"metre"}:
            raise ConfigError(f"config error at {key}: {code!r} ({crs.name}) is not a projected CRS in metres; "
                              "distances for the KNN weights and probes need one (e.g. a UTM zone)")
    for dataset, counts in regions.items():
        missing = sorted(r for r in counts if r not in declared and r not in CRS_PRESETS)
        if missing:
            raise ConfigError(f"config error at spatial.crs: no projected CRS for region(s) {missing} of dataset "
                              f"{dataset!r}; add them under spatial.crs (presets: {sorted(CRS_PRESETS)})")


def _check_region_sizes(config: dict[str, Any], regions: dict[str, Counter]) -> None:
    """Each region has more places than spatial.k and at least as many as the probes' folds and blocks."""
    sp, pr = config["spatial"], config["probes"]
    blocks = pr["blocks"] if pr["blocks"] is not None else 4 * pr["folds"]
    for dataset, counts in regions.items():
        region, n = min(counts.items(), key=lambda item: (item[1], item[0]))
        if sp["enabled"] and n <= sp["k"]:
            raise ConfigError(f"config error at spatial.k: region {region!r} of dataset {dataset!r} has {n} places; "
                              f"k = {sp['k']} neighbours need at least k + 1 (lower spatial.k or add places)")
        if pr["enabled"] and n < max(pr["folds"], blocks):
            raise ConfigError(f"config error at probes.folds: region {region!r} of dataset {dataset!r} has {n} places; "
                              f"{pr['folds']} folds over {blocks} spatial blocks need at least {max(pr['folds'], blocks)} "
                              "(lower probes.folds / probes.blocks or add places)")
        if pr["enabled"] and pr["folds"] > blocks:
            raise ConfigError(f"config error at probes.blocks: {blocks} blocks cannot make {pr['folds']} folds")


def _check_sample_counts(config: dict[str, Any], regions: dict[str, Counter], base_dir: str | Path) -> None:
    """Semi-NMF has at most min(units, samples) factors: the hook's width, and (pooled) the prompts."""
    from mechflow.models import hook_width, resolve_model

    snmf = config["snmf"]
    for m in snmf.get("models") or list(config["models"]):
        width = hook_width(resolve_model(config["models"][m]["spec"], base_dir), snmf["hook"])
        for name, run in snmf["runs"].items():
            if width is not None and run["n_factors"] > width:
                raise ConfigError(f"config error at snmf.runs.{name}.n_factors: {run['n_factors']} factors from the "
                                  f"{width} units of {snmf['hook']!r} in model {m!r}; at most {width}")
    if snmf["level"] != "pooled":
        return
    for dataset, counts in regions.items():
        if snmf.get("datasets") and dataset not in snmf["datasets"]:
            continue
        n = sum(counts.values())
        for name, run in snmf["runs"].items():
            if run["n_factors"] > n:
                raise ConfigError(f"config error at snmf.runs.{name}.n_factors: {run['n_factors']} factors from the "
                                  f"{n} prompts of dataset {dataset!r}; at most {n} (one sample per prompt)")
