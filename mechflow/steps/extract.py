"""The extraction step: which hooks and layers a study extracts, the params of its jobs, and their checks.

Pooled activations of every hook a step reads are written by one job per (prompt set, model): one
forward pass (``extract``), or ``extract.shards`` slices and one gather per hook (``extract_shard`` +
``gather_activations``). Token-level files (an SAE run's level, ``sae.runs.<run>.level`` else ``sae.level``, or
``snmf.level`` ``tokens`` / ``corpus``) come from one ``extract_tokens`` job per hook. Negative layers count from the end of the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechflow.contracts import result_path
from mechflow.facts import StudyFacts
from mechflow.study import ConfigError, canonical, model_params, sae_run_placement, study_pairs

__all__ = ["TOKEN_LEVELS", "hooks", "pooled_hooks", "layers_for", "extracted_layers", "n_extracted", "reads_tokens", "jobs",
           "params", "token_layers", "token_params", "sharded", "rule_counts", "check", "check_step_models",
           "check_analysed_layers"]

#: the levels whose jobs read every token of the prompts (the hook's token file, rule extract_tokens)
TOKEN_LEVELS = ("tokens", "corpus")


def _run_hooks(study: dict[str, Any]) -> list[tuple[str, str]]:
    """(hook, level) of every SAE run (each its own, :func:`~mechflow.study.sae_run_placement`) and, when it has runs,
    of the semi-NMF section."""
    out = [(p["hook"], p["level"]) for p in (sae_run_placement(study, r) for r in study["sae"]["runs"])]
    snmf = study["snmf"]
    return out + ([(snmf["hook"], snmf["level"])] if snmf["runs"] else [])


def _read_hooks(study: dict[str, Any], pooled_only: bool) -> set[str]:
    sp, pr = study["spatial"], study["probes"]
    out = set(study["extract"]["hooks"])
    out |= set(sp["hooks"]) if sp["enabled"] and sp["units"] else set()
    out |= set(pr["hooks"]) if pr["enabled"] else set()
    # token and corpus levels read the hook's token file of the prompts
    out |= {hook for hook, level in _run_hooks(study) if not pooled_only or level == "pooled"}
    return out


def hooks(study: dict[str, Any]) -> list[str]:
    """Every hook some step of the study reads (pooled or token level)."""
    return sorted(_read_hooks(study, pooled_only=False))


def pooled_hooks(study: dict[str, Any]) -> list[str]:
    """Hooks read as pooled activations: one extraction job per (dataset, model) writes them all in one pass."""
    return sorted(_read_hooks(study, pooled_only=True))


def layers_for(study: dict[str, Any], hook: str) -> str | list[int]:
    """The layers extracted for ``hook`` as the study gives them (``extract.hook_layers``, else ``extract.layers``)."""
    return study["extract"]["hook_layers"].get(hook, study["extract"]["layers"])


def extracted_layers(study: dict[str, Any], hook: str, n_layers: int | None) -> set[int] | None:
    """Layer indices extracted for ``hook`` in a model of ``n_layers`` blocks (None when that is unknown)."""
    layers = layers_for(study, hook)
    if layers == "all":
        return set(range(n_layers)) if n_layers is not None else None
    if n_layers is None:
        return {layer for layer in layers if layer >= 0} if all(layer >= 0 for layer in layers) else None
    return {layer + n_layers if layer < 0 else layer for layer in layers}


def n_extracted(study: dict[str, Any], facts: StudyFacts, model: str, hook: str) -> int | None:
    """How many layers of ``hook`` are extracted from ``model`` (None when unknown)."""
    layers = extracted_layers(study, hook, facts.models[model].layers)
    return len(layers) if layers is not None else None


def reads_tokens(study: dict[str, Any], step: str, entry: dict[str, Any]) -> bool:
    """Whether manifest entry ``entry`` of ``step`` (``sae``, ``snmf``) reads the token file of its hook rather than
    pooled activations: its level (of an SAE, its run's; of semi-NMF, the section's) is tokens or corpus."""
    level = sae_run_placement(study, entry["run"])["level"] if step == "sae" else study[step]["level"]
    return level in TOKEN_LEVELS


def jobs(study: dict[str, Any], facts: StudyFacts) -> list[dict[str, Any]]:
    """Manifest entries of the pooled activations the study asks for (``extract.hooks``): dataset, model, hook, path."""
    root = study["results"]
    return [dict(dataset=d, model=m, hook=h, path=result_path("activations", root, dataset=d, model=m, hook=h))
            for d, m in study_pairs(study) for h in study["extract"]["hooks"]]


def params(study: dict[str, Any], model: str) -> dict[str, Any]:
    """Pooled extraction of every hook of :func:`pooled_hooks` in one pass (hook -> layers)."""
    ex = study["extract"]
    return canonical({
        "model": model_params(study, model),
        "hooks": {hook: layers_for(study, hook) for hook in pooled_hooks(study)},
        "pooling": ex["pooling"],
        "exclude": ex["exclude"],
        "keep_sink": ex["keep_sink"],
        "batch_size": ex["batch_size"],
        "max_length": ex["max_length"],
    })


def token_layers(study: dict[str, Any], manifest: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str, str], list[int]]:
    """(dataset, model, hook) -> the layers its token file must hold: those of the token-level steps (``sae`` /
    ``snmf``) and explorers that read it, and the spatial layers whose name positions are read from it. Only these
    are extracted, and the forward pass stops after the deepest (a token file holds every real token of every
    prompt: all 30 layers of a 3,000-prompt set are 2.5 GB)."""
    readers = [e for step in ("sae", "snmf") for e in manifest[step] if reads_tokens(study, step, e)]
    readers += list(manifest.get("explorer", []))
    readers += [e for e in manifest["spatial"] if e.get("name_position")]
    out: dict[tuple[str, str, str], set[int]] = {}
    for e in readers:
        out.setdefault((e["dataset"], e["model"], e["hook"]), set()).add(int(e["layer"]))
    return {key: sorted(layers) for key, layers in out.items()}


def token_params(study: dict[str, Any], manifest: dict[str, list[dict[str, Any]]], dataset: str, model: str,
                 hook: str) -> dict[str, Any]:
    """Token-level extraction of one hook of one prompt set at the layers its readers need (:func:`token_layers`);
    it does not pool: pooling and the pooled sink are not among its parameters."""
    pooled = {k: v for k, v in params(study, model).items() if k not in ("pooling", "keep_sink", "hooks")}
    layers = token_layers(study, manifest).get((dataset, model, hook))
    if layers is None:
        raise ConfigError(f"no step reads the token file of {dataset}/{model}/{hook}")
    return canonical(dict(pooled, hook=hook, layers=layers))


def sharded(study: dict[str, Any]) -> bool:
    """Whether pooled extraction runs in ``extract.shards`` slices and a gather per hook (else one job per pair)."""
    return int(study["extract"]["shards"]) > 1


def rule_counts(study: dict[str, Any], manifest: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Extraction jobs per rule of a study whose analysis jobs are ``manifest`` (``extract`` in one pass, or
    ``extract.shards`` shards and a gather per pooled hook; ``extract_tokens`` per token file: those the token-level
    steps train on, those every explorer reads for its per-token highlighting and those the name positions are read
    from; ``name_positions`` per prompt set, model and hook whose name positions the spatial step tests)."""
    pooled = {(e["dataset"], e["model"]) for e in manifest["activations"] + manifest["probes"]}
    pooled |= {(e["dataset"], e["model"]) for e in manifest["spatial"] if e["kind"] == "units" and not e.get("name_position")}
    pooled |= {(e["dataset"], e["model"]) for step in ("sae", "snmf") for e in manifest[step]
               if not reads_tokens(study, step, e)}
    tokens = token_layers(study, manifest)
    names = {(e["dataset"], e["model"], e["hook"]) for e in manifest["spatial"] if e.get("name_position")}
    shards = int(study["extract"]["shards"])
    counts = ({"extract_shard": len(pooled) * shards, "gather_activations": len(pooled) * len(pooled_hooks(study))}
              if sharded(study) else {"extract": len(pooled)})
    return {**counts, "extract_tokens": len(tokens), "name_positions": len(names)}


# ---- checks ---------------------------------------------------------------------------------------


def check(study: dict[str, Any], facts: StudyFacts, base_dir: str | Path = ".") -> None:
    """``extract.layers`` and ``extract.hook_layers`` name layers every model has (negative: from the end)."""
    lists = [("extract.layers", study["extract"]["layers"])]
    lists += [(f"extract.hook_layers.{h}", v) for h, v in study["extract"]["hook_layers"].items()]
    for key, layers in lists:
        if layers == "all":
            continue
        for model, n in facts.n_layers.items():
            bad = [layer for layer in layers if n is not None and not -n <= layer < n]
            if bad:
                raise ConfigError(key, f"layer(s) {bad} do not exist in model {model!r} "
                                       f"({n} layers: 0..{n - 1}, or -{n}..-1 from the end)")


def check_step_models(study: dict[str, Any], section: str) -> None:
    """The models a step names (``<section>.models``) are models of the study."""
    for m in study[section].get("models") or []:
        if m not in study["models"]:
            raise ConfigError(f"{section}.models", f"unknown model {m!r} (have {sorted(study['models'])})")


def check_analysed_layers(study: dict[str, Any], facts: StudyFacts, section: str, section_hooks: list[str]) -> None:
    """The layers a step analyses (``<section>.layers``) exist in each of its models and are extracted for each
    of its hooks."""
    sec = study[section]
    for m in sec.get("models") or list(study["models"]):
        n = facts.models[m].layers
        for hook in section_hooks:
            have = extracted_layers(study, hook, n)
            for layer in sec["layers"]:
                if n is not None and layer >= n:
                    raise ConfigError(f"{section}.layers", f"layer {layer} does not exist in model {m!r} ({n} layers)")
                if have is not None and layer not in have:
                    raise ConfigError(f"{section}.layers", f"layer {layer} of hook {hook!r} is not extracted "
                                                           f"(extract.layers / extract.hook_layers.{hook})")
