"""The lens step: its prompt sets, job-manifest entries, per-set settings and checks.

``rules/lens.smk`` and the manifest read the study through these functions, so what runs, what the
report reads and what is checked before a run come from one place. Lens prompt sets are the
``{dataset}`` wildcard of the lens files:

- ``lens.latent_language.name`` (default ``words``): the word-translation prompts;
- each GeoNames prompt set of the study named by ``lens.consistency.datasets`` (default: all),
  turned into multiple-choice placename questions;
- each user CSV of ``lens.consistency.questions`` (name -> path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import result_path
from mechflow.data.prompts import geonames_path
from mechflow.facts import StudyFacts
from mechflow.lens.errors import LensError
from mechflow.lens.latent_language import translation_pairs
from mechflow.lens.questions import csv_questions
from mechflow.lens.words import load_words, shipped_words_path
from mechflow.study import ConfigError, canonical, model_params, settings

#: the settings of ``lens.consistency`` that define a consistency file
CONSISTENCY_KEYS = ("layers", "bins", "samples", "max_new_tokens", "temperature", "top_p", "seed")

__all__ = ["lens_models", "consistency_sets", "lens_sets", "prompt_set_spec", "prompt_set_inputs", "jobs", "check",
           "tuned_lens_inputs", "model_settings", "read_settings", "tuned_settings", "consistency_settings"]


def lens_models(config: dict[str, Any]) -> list[str]:
    """Models the lens reads (``lens.models``, null = every model of the study)."""
    lens = config.get("lens") or {}
    return sorted(lens.get("models") or config["models"])


def consistency_sets(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Consistency question sets by name: ``{"kind": "places", "dataset": name}`` or ``{"kind": "csv", "path": ...}``."""
    cons = (config.get("lens") or {}).get("consistency") or {}
    chosen = cons.get("datasets")
    names = chosen if chosen is not None else [d for d, ds in config["datasets"].items() if ds.get("source", "geonames") == "geonames"]
    out = {d: {"kind": "places", "dataset": d} for d in sorted(names)}
    out.update({name: {"kind": "csv", "path": path} for name, path in sorted((cons.get("questions") or {}).items())})
    return out


def lens_sets(config: dict[str, Any]) -> list[str]:
    """Every lens prompt set of the study (empty when the lens is off)."""
    lens = config.get("lens") or {}
    if not lens.get("enabled"):
        return []
    words = [lens["latent_language"]["name"]] if lens["latent_language"]["enabled"] else []
    return words + list(consistency_sets(config))


def prompt_set_spec(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Everything that defines one lens prompt set (the params of its ``lens_prompts`` job)."""
    lens = config["lens"]
    ll, cons = lens["latent_language"], lens["consistency"]
    if ll["enabled"] and name == ll["name"]:
        return {"kind": "words", "words": ll["words"], "pairs": ll["pairs"], "shots": ll["shots"],
                "max_words": ll["max_words"], "seed": ll["seed"]}
    sets = consistency_sets(config)
    if name not in sets:
        raise KeyError(f"{name!r} is not a lens prompt set of this study ({lens_sets(config)})")
    common = {"shots": cons["shots"], "max_questions": cons["max_questions"], "seed": cons["seed"]}
    if sets[name]["kind"] == "places":
        return {"kind": "places", "dataset": config["datasets"][name], "question": cons["question"],
                "options": cons["options"], **common}
    return {"kind": "csv", "path": sets[name]["path"], **common}


def prompt_set_inputs(config: dict[str, Any], name: str) -> list[str]:
    """The files a lens prompt set is built from: the word list, the GeoNames gazetteer, or the question CSV."""
    spec = prompt_set_spec(config, name)
    if spec["kind"] == "words":
        return [str(spec["words"] or shipped_words_path())]
    if spec["kind"] == "places":
        return [str(geonames_path(spec["dataset"].get("gazetteer", "cities500")))]
    return [str(spec["path"])]


def tuned_lens_inputs(config: dict[str, Any], root: str, model: str) -> list[str]:
    """The tuned lens a read-out of ``model`` needs (none when only the logit lens is asked for)."""
    return [result_path("tuned_lens", root, model=model)] if "tuned" in config["lens"]["lenses"] else []


def model_settings(config: dict[str, Any], model: str) -> dict[str, Any]:
    """The settings a lens job loads ``model`` with."""
    return canonical(model_params(config, model))


def read_settings(config: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The read-out settings of ``lens:`` a job uses (default: every read-out's)."""
    lens = config["lens"]
    return canonical({k: lens[k] for k in keys or ("lenses", "batch_size", "max_length", "chunk_mb")})


def tuned_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The tuned lens's fitting settings (``lens.tuned``, resources left out)."""
    return settings(config["lens"]["tuned"])


def consistency_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The consistency read-out's settings (``lens.consistency``: layers, calibration bins, sampling)."""
    return settings(config["lens"]["consistency"], *CONSISTENCY_KEYS)


def jobs(config: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries of the lens step: one per tuned lens (``kind: tuned_lens``, ``path`` = its training.nc,
    ``weights``), latent-language file and consistency file (``dataset``, ``model``, ``path``)."""
    if not lens_sets(config):
        return []
    lens, root = config["lens"], config["results"]
    jobs = []
    for m in lens_models(config):
        if "tuned" in lens["lenses"]:
            jobs.append({"kind": "tuned_lens", "model": m, "path": result_path("tuned_lens_training", root, model=m),
                         "weights": result_path("tuned_lens", root, model=m)})
        if lens["latent_language"]["enabled"]:
            d = lens["latent_language"]["name"]
            jobs.append({"kind": "latent_language", "dataset": d, "model": m,
                         "path": result_path("latent_language", root, dataset=d, model=m)})
        for d in consistency_sets(config):
            jobs.append({"kind": "consistency", "dataset": d, "model": m, "path": result_path("consistency", root, dataset=d, model=m)})
    return jobs


def check(config: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """What the schema cannot say about ``lens:``; ConfigError naming the key. Runs only when the lens is enabled."""
    lens = config.get("lens") or {}
    if not lens.get("enabled"):
        return
    for m in lens.get("models") or []:
        if m not in config["models"]:
            raise ConfigError("lens.models", f"unknown model {m!r} (have {sorted(config['models'])})")
    ll, cons = lens["latent_language"], lens["consistency"]
    sets = consistency_sets(config)
    if not ll["enabled"] and not sets:
        raise ConfigError("lens", "the lens is enabled but reads nothing: enable lens.latent_language or "
                          "name question sets (lens.consistency.datasets / lens.consistency.questions)")
    for d in cons.get("datasets") or []:
        if d not in config["datasets"]:
            raise ConfigError("lens.consistency.datasets", f"unknown prompt set {d!r} (have {sorted(config['datasets'])})")
        if config["datasets"][d].get("source", "geonames") != "geonames":
            raise ConfigError("lens.consistency.datasets", f"{d!r} is not a GeoNames prompt set; put your own "
                              "questions under lens.consistency.questions (CSV: question, options, answer)")
    for name, path in (cons.get("questions") or {}).items():
        if name in config["datasets"] or (ll["enabled"] and name == ll["name"]):
            raise ConfigError(f"lens.consistency.questions.{name}", "the name is taken by a prompt set; choose another")
        p = Path(path) if Path(path).is_absolute() else Path(base_dir) / path
        if not p.exists():
            raise ConfigError(f"lens.consistency.questions.{name}", f"{p} does not exist")
    n_words = None
    if ll["enabled"]:
        n_words = _check_words(ll, base_dir)
        if ll["name"] in sets:
            raise ConfigError("lens.latent_language.name", f"{ll['name']!r} is also a consistency question set")
    if "tuned" in lens["lenses"]:
        _check_fit_pool(ll, cons, sets, n_words, base_dir)
    for m in lens_models(config):
        n = facts.models[m].layers
        bad = [layer for layer in cons.get("layers") or [] if n is not None and layer >= n]
        if bad:
            raise ConfigError("lens.consistency.layers", f"layer(s) {bad} do not exist in model {m!r} ({n} layers)")
    _check_causal(config, facts)


def _check_causal(config: dict[str, Any], facts: StudyFacts) -> None:
    """Every model the lens reads is a causal LM: the logit and tuned lenses read its next-token head, the latent-language
    and consistency read-outs its next token (after every value of ``lens:`` was checked, whatever the models are)."""
    encoders = [m for m in lens_models(config) if not facts.models[m].causal]
    if not encoders:
        return
    kinds = ", ".join(f"{m} ({'causal LM' if facts.models[m].causal else 'encoder'})" for m in sorted(config["models"]))
    causal = facts.causal_models()
    if not causal:
        raise ConfigError("lens", f"the lens is enabled but the study has no causal LM to read (models: {kinds}); the "
                          "lenses read a next-token head; add a decoder LM to models: or set lens.enabled: false")
    raise ConfigError("lens.models", f"{', '.join(map(repr, encoders))} {'is' if len(encoders) == 1 else 'are'} not a "
                      f"causal LM (no next-token head to read; models: {kinds}); set lens.models: {causal}")


def _check_fit_pool(ll: dict[str, Any], cons: dict[str, Any], sets: dict[str, dict[str, Any]], n_words: int | None,
                    base_dir: str | Path) -> None:
    """The tuned lens is fitted only on prompts no read-out reads (``split = lens``: the words or questions not
    drawn); some set must leave such prompts. Place sets are taken to leave some when ``max_questions`` is set (their
    size is known only once the gazetteer is read: the tuned_lens job says so if not)."""
    words = n_words is not None and ll["max_words"] is not None and ll["max_words"] < n_words
    limit = cons.get("max_questions")
    questions = False
    for spec in sets.values():
        if limit is None:
            break
        if spec["kind"] == "places":
            questions = True
        else:
            p = Path(spec["path"]) if Path(spec["path"]).is_absolute() else Path(base_dir) / spec["path"]
            try:
                questions = questions or len(csv_questions(p)) > limit + cons["shots"]
            except LensError as e:
                raise ConfigError("lens.consistency.questions", " ".join(str(e).split())) from None
    if not (words or questions):
        raise ConfigError("lens.tuned", "the tuned lens is fitted only on prompts no read-out reads (the words or "
                          "questions not drawn), and every prompt is read out: set lens.latent_language.max_words below "
                          f"the word list's {n_words} words or lens.consistency.max_questions below a set's size, or "
                          "lens.lenses: [logit]")


def _check_words(ll: dict[str, Any], base_dir: str | Path) -> int:
    """The word list's size, after checking it and the pairs."""
    path = ll["words"]
    if path is not None and not Path(path).is_absolute():
        path = Path(base_dir) / path
    try:
        words = load_words(path)
        pairs = translation_pairs(list(words.columns), ll["pairs"])
    except LensError as e:
        raise ConfigError("lens.latent_language", f"{' '.join(str(e).split())}") from None
    if not pairs:
        raise ConfigError("lens.latent_language", "the word list has fewer than two non-English languages")
    if ll["shots"] >= len(words):
        raise ConfigError("lens.latent_language.shots", f"{ll['shots']} demonstrations need more than "
                          f"{ll['shots']} words (the list has {len(words)})")
    return len(words)
