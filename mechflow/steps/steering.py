"""The steering step: job-manifest entries, each job's input files and params, and the checks.

``rules/steer.smk``, the manifest and the pre-run checks read ``steering:`` through these functions, so what runs, what the report reads and
what is checked come from one place. One job per (prompt set, causal LM, vector): ``steering.datasets`` x
``steering.models`` (null: every causal LM of the study; encoders have no next token to steer) x
``steering.vectors``. A vector made from an SAE or semi-NMF run uses that run of the same prompt set and
model, at the run's hook and the vector's layer. No torch is imported here.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from mechflow.contracts import SAE_FILES, result_path
from mechflow.facts import StudyFacts
from mechflow.io import read_csv_checked
from mechflow.models import model_input_files
from mechflow.steering.prompts import is_csv
from mechflow.study import ConfigError, canonical, model_params, prompt_sets, study_pairs

__all__ = ["steering_models", "steering_pairs", "vector_spec", "jobs", "steering_inputs", "steering_params", "check",
           "SETTINGS"]

#: settings of ``steering:`` shared by every vector (each is a param of every job)
SETTINGS = ("scales", "scale_unit", "from_position", "holdout", "train_prompts", "eval_prompts", "generations",
            "max_new_tokens", "batch_size", "max_length", "seed")
#: per-prompt variables of a prompt file a template may use
TEMPLATE_VARIABLES = ("name", "text", "region", "admin1_code", "population", "place_id", "latitude", "longitude")


def _section(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("steering") or {}


def steering_models(config: dict[str, Any], facts: StudyFacts) -> list[str]:
    """Models steered: ``steering.models``, or (null) every causal LM of the study."""
    chosen = _section(config).get("models")
    return sorted(chosen) if chosen else facts.causal_models()


def steering_pairs(config: dict[str, Any], facts: StudyFacts) -> list[tuple[str, str]]:
    """(prompt set, model) pairs steered, less the models a prompt set leaves out (``datasets.<d>.models``)."""
    sec = _section(config)
    if not sec.get("enabled") or not sec.get("vectors"):
        return []
    return study_pairs(config, sec, models=steering_models(config, facts))


def vector_spec(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The vector ``name`` as configured, with its hook resolved (an SAE or semi-NMF run's own hook)."""
    spec = dict(_section(config)["vectors"][name])
    if spec["source"] in ("sae", "snmf"):
        spec["hook"] = config[spec["source"]]["hook"]
    return spec


def jobs(config: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries: one per (prompt set, model, vector): ``dataset``, ``model``, ``name``, ``source``, ``hook``,
    ``layer``, ``path``."""
    found, root = [], config["results"]
    for d, m in steering_pairs(config, facts):
        for name in sorted(_section(config)["vectors"]):
            spec = vector_spec(config, name)
            found.append({"dataset": d, "model": m, "name": name, "source": spec["source"], "hook": spec["hook"],
                         "layer": int(spec["layer"]), "path": result_path("steering", root, dataset=d, model=m, name=name)})
    return found


def steering_inputs(config: dict[str, Any], root: str, dataset: str, model: str, name: str) -> dict[str, Any]:
    """The files one steering job reads: the prompt set, the model's files, and the vector's source (an SAE's
    weights and features, a semi-NMF file, the Moran file that picks ``top_moran``, CSV sides)."""
    spec = vector_spec(config, name)
    out: dict[str, Any] = {"prompts": result_path("prompts", root, dataset=dataset),
                           "model": model_input_files(config["models"][model]["spec"])}
    where = dict(dataset=dataset, model=model, hook=spec["hook"], layer=spec["layer"], run=spec["run"])
    if spec["source"] == "sae":
        sae_dir = result_path("sae_dir", root, **where)
        out["weights"] = [f"{sae_dir}/{SAE_FILES[0]}"]
        out["features"] = [f"{sae_dir}/features.nc"]
    elif spec["source"] == "snmf":
        out["snmf"] = [result_path("snmf", root, **where)]
    if spec["source"] in ("sae", "snmf") and spec["feature"] == "top_moran":
        out["moran"] = [result_path("moran", root, source=f"{spec['source']}-{spec['run']}",
                                    **{k: v for k, v in where.items() if k != "run"})]
    if spec["source"] == "means":
        out["csv"] = [s for s in (spec["positive"], spec["negative"]) if is_csv(s)]
    return out


def steering_params(config: dict[str, Any], dataset: str, model: str, name: str) -> dict[str, Any]:
    """Everything that defines one steering job's result (resources left out)."""
    sec = _section(config)
    return canonical({"model": model_params(config, model), "vector": vector_spec(config, name),
                      **{k: sec[k] for k in SETTINGS}})


# ---- checks -------------------------------------------------------------------------------------------


def check(config: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """What the schema cannot say about ``steering:`` (ConfigError naming the key); nothing when it is off.
    Region names are checked against the prompt sets' regions where the facts hold them."""
    sec = _section(config)
    if not sec.get("enabled"):
        return
    key = "steering"
    for m in sec.get("models") or []:
        if m not in config["models"]:
            raise ConfigError(f"{key}.models", f"unknown model {m!r} (have {sorted(config['models'])})")
        if not facts.models[m].causal:
            raise ConfigError(f"{key}.models", f"{m!r} is not a causal LM (no next token to steer); steer a decoder LM")
    for d in sec.get("datasets") or []:
        if d not in prompt_sets(config):
            raise ConfigError(f"{key}.datasets", f"unknown prompt set {d!r} (have {prompt_sets(config)})")
    if not sec.get("vectors"):
        raise ConfigError(f"{key}.vectors", "steering is enabled but names no vector")
    pairs = steering_pairs(config, facts)
    # every value is checked whatever the models are: layers against the models steered and regions against the
    # prompt sets steered, else (no causal LM to steer) against every model and prompt set the section names
    models = sorted({m for _, m in pairs}) or sorted(config["models"])
    datasets = sorted({d for d, _ in pairs}) or sorted(sec.get("datasets") or prompt_sets(config))
    for name in sec["vectors"]:
        _check_vector(config, f"{key}.vectors.{name}", vector_spec(config, name), pairs, models, datasets, facts, base_dir)
    if not pairs:
        raise ConfigError(key, "steering is enabled but the study has no causal LM to steer (models: "
                          f"{_kinds(config, facts)}); add a decoder LM to models: or set steering.enabled: false")


def _kinds(config: dict[str, Any], facts: StudyFacts) -> str:
    """``minilm (encoder), smollm2 (causal LM)``: the study's models and which can be steered or read by a lens."""
    return ", ".join(f"{m} ({'causal LM' if facts.models[m].causal else 'encoder'})" for m in sorted(config["models"]))


def _check_vector(config: dict[str, Any], key: str, spec: dict[str, Any], pairs: list[tuple[str, str]],
                  models: list[str], datasets: list[str], facts: StudyFacts, base_dir: str | Path) -> None:
    for m in models:
        n = facts.models[m].layers
        if n is not None and spec["layer"] >= n:
            raise ConfigError(f"{key}.layer", f"layer {spec['layer']} does not exist in model {m!r} ({n} layers: 0..{n - 1})")
    for field in ("template", "eval_template"):
        if spec.get(field) is not None:
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(spec[field]) if f is not None}
            except ValueError as e:
                raise ConfigError(f"{key}.{field}", f"{spec[field]!r} is not a valid format string ({e})") from None
            unknown = sorted(f for f in names if f not in TEMPLATE_VARIABLES)
            if unknown:
                raise ConfigError(f"{key}.{field}", f"unknown field(s) {unknown}; a steering template uses the prompt file's "
                                  f"variables: {', '.join(TEMPLATE_VARIABLES)}")
    sides = [spec["positive"], spec["negative"]] if spec["source"] == "means" else []
    for side, which in zip(sides, ("positive", "negative")):
        if side is None:
            raise ConfigError(f"{key}.{which}", "a difference of means needs both sides (a region or a CSV file)")
    if spec["source"] in ("sae", "snmf") and spec["run"] is None:
        raise ConfigError(f"{key}.run", f"a vector from {spec['source']} names one of its runs")
    for side, which in zip(sides, ("positive", "negative")):
        if is_csv(side):
            p = Path(side) if Path(side).is_absolute() else Path(base_dir) / side
            if not p.exists():
                raise ConfigError(f"{key}.{which}", f"{p} does not exist")
            _check_csv(p, f"{key}.{which}")
    named = [(f"{key}.{w}", s) for s, w in zip(sides, ("positive", "negative")) if not is_csv(s)]
    if spec["eval_region"] is not None:
        named.append((f"{key}.eval_region", spec["eval_region"]))
    for d in datasets:
        have = (facts.regions or {}).get(d)
        for k, region in named:
            if have is not None and region not in have:
                raise ConfigError(f"{k}", f"region {region!r} is not in prompt set {d!r} (regions {sorted(have)})")
    if spec["source"] in ("sae", "snmf"):
        _check_run(config, key, spec, pairs)


def _check_csv(path: Path, key: str) -> None:
    try:
        frame = read_csv_checked(path, ValueError)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{key}", f"{' '.join(str(e).split())[:200]}") from None
    if "text" not in frame.columns or frame["text"].dropna().empty:
        raise ConfigError(f"{key}", f"{path} needs a `text` column with at least one prompt (has {list(frame.columns)})")


def _check_run(config: dict[str, Any], key: str, spec: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    """An SAE / semi-NMF vector names a run of the study at the vector's layer, for every pair it steers."""
    source, run = spec["source"], spec["run"]
    section = config[source]
    label = "SAE" if source == "sae" else "semi-NMF"
    if run not in section["runs"]:
        raise ConfigError(f"{key}.run", f"{run!r} is not a {label} run of the study ({source}.runs: {sorted(section['runs'])})")
    if spec["layer"] not in section["layers"]:
        raise ConfigError(f"{key}.layer", f"the {label} runs are trained at layers {section['layers']} ({source}.layers), "
                          f"not {spec['layer']}")
    datasets = section.get("datasets") or prompt_sets(config)
    models = section.get("models") or sorted(config["models"])
    for d, m in pairs:
        if d not in datasets or m not in models:
            raise ConfigError(f"{key}.run", f"the {label} run {run!r} is not trained on prompt set {d!r} with model {m!r} "
                              f"({source}.datasets / {source}.models); restrict steering.datasets / steering.models")
    feature = spec["feature"]
    size = section["runs"][run]["n_features"] if source == "sae" else section["runs"][run]["n_factors"]
    if feature == "top_moran":
        sp = config["spatial"]
        analysed = (sp.get("datasets") or prompt_sets(config), sp.get("models") or sorted(config["models"]))
        if not sp["enabled"] or any(d not in analysed[0] or m not in analysed[1] for d, m in pairs):
            raise ConfigError(f"{key}.feature", f"top_moran needs the spatial step on the {label} run (spatial.enabled, "
                              "spatial.datasets, spatial.models); or give a feature index")
    elif feature >= size:
        raise ConfigError(f"{key}.feature", f"{feature} does not exist in {label} run {run!r} ({size} features: 0..{size - 1})")
