# Shared helpers: result paths (mechflow.contracts), the study's job manifest, canonical params, code digests.
# One manifest (JOBS) lists every analysis job of the study; the final targets, the report's inputs and
# the start-of-run summary all derive from it.

from collections import Counter

from mechflow.checks import study_crs
from mechflow.config import canonical, model_params, sae_jobs, study_pairs
from mechflow.contracts import SAE_FILES, is_main, result_path
from mechflow.lens.jobs import lens_jobs, lens_sets
from mechflow.selection.jobs import selection_jobs
from mechflow.steering.jobs import steering_jobs
from mechflow.workflow import script_code_digest

ROOT = config["results"]  # every output lives under this folder
EXTRACT = config["extract"]
SPATIAL = config["spatial"]
PROBES = config["probes"]
SAE = config["sae"]
SNMF = config["snmf"]
REPORT = config["report"]
DATASETS = sorted(config["datasets"])
MODELS = sorted(config["models"])
# every hook some step needs is extracted
HOOKS = sorted(
    set(EXTRACT["hooks"])
    | (set(SPATIAL["hooks"]) if SPATIAL["enabled"] and SPATIAL["units"] else set())
    | (set(PROBES["hooks"]) if PROBES["enabled"] else set())
    | ({SAE["hook"]} if SAE["runs"] else set())
    | ({SNMF["hook"]} if SNMF["runs"] else set())
)
#: hooks read as pooled activations: one extraction job per (dataset, model) writes them all in one pass
POOLED_HOOKS = sorted(
    set(EXTRACT["hooks"])
    | (set(SPATIAL["hooks"]) if SPATIAL["enabled"] and SPATIAL["units"] else set())
    | (set(PROBES["hooks"]) if PROBES["enabled"] else set())
    | ({SAE["hook"]} if SAE["runs"] and SAE["level"] == "pooled" else set())
    | ({SNMF["hook"]} if SNMF["runs"] and SNMF["level"] == "pooled" else set())
)
#: Snakemake ``priority:`` of the steps on the longest path of a study (extract -> sae -> sae_splice -> report):
#: of the jobs ready at one time these start first, so a long SAE job overlaps the many short spatial ones
#: instead of waiting for them (the order of jobs, never what they compute)
PRIORITY = {"extract": 10, "sae": 20, "sae_splice": 10}
#: settings that change how a job runs, never what it computes
RESOURCE_KEYS = ("threads", "mem_mb", "gpu")
#: region -> projected CRS: inline regions' crs, then spatial.crs overrides (presets fill the rest)
CRS = canonical(study_crs(config))


def path(kind):
    """A result path template under the study's results root (see mechflow.contracts.RESULT_PATHS)."""
    return result_path(kind, ROOT)


PROMPTS = path("prompts")
ACTIVATIONS = path("activations")
TOKENS = path("tokens")
SHARD = path("shard")
SAE_DIR = path("sae_dir")
SAE_CHECKPOINTS = path("sae_checkpoints")
SAE_SPLICE = path("sae_splice")
SNMF_FILE = path("snmf")
MORAN = path("moran")
LISA = path("lisa")
PROBE_FILE = path("probes")
REPORT_HTML = path("report")
REPORT_FIGURES = path("report_figures")
REPORT_TABLE = path("report_table")
LOGS = path("logs")
BENCHMARKS = path("benchmarks")

_CODE = {}


def code(script):
    """Digest of the mechflow code a rule script runs (its imports, followed through the package)."""
    if script not in _CODE:
        _CODE[script] = script_code_digest(Path(workflow.basedir) / "scripts" / f"{script}.py")
    return _CODE[script]


def model_files(wildcards):
    """Every file the model loads from (weights, config, tokenizer): a changed model reruns extraction."""
    from mechflow.models import model_input_files

    return model_input_files(config["models"][wildcards.model]["spec"])


def prompt_source_files(wildcards):
    """The file a prompt set is read from: the user's CSV / xarray file, or the GeoNames gazetteer."""
    from mechflow.data.prompts import geonames_path

    ds = config["datasets"][wildcards.dataset]
    return [ds["path"]] if ds["source"] in ("csv", "xarray") else [str(geonames_path(ds["gazetteer"]))]


def pairs(section=None):
    """(dataset, model) pairs a step runs on (:func:`mechflow.config.study_pairs`); ``None``: every pair extracted."""
    return study_pairs(config, section)


def layers_for(hook):
    """The layers extracted for a hook ('all' or a list)."""
    return EXTRACT["hook_layers"].get(hook, EXTRACT["layers"])


# ---- the job manifest ------------------------------------------------------------------------------


def splices(model):
    """Whether the SAEs of ``model`` get a loss-recovered splice: resid SAEs of a causal LM, when asked for."""
    from mechflow.models import is_causal_lm, resolve_model

    return SAE["hook"] == "resid" and SAE["splice_prompts"] > 0 and is_causal_lm(resolve_model(config["models"][model]["spec"]))



def _study_jobs():
    """Every analysis job of the study, by step, as JSON-friendly entries (wildcards + output paths)."""
    sae = sae_jobs(config)
    snmf = [
        dict(dataset=d, model=m, hook=SNMF["hook"], layer=layer, run=r)
        for d, m in pairs(SNMF) for layer in SNMF["layers"] for r in sorted(SNMF["runs"])
    ]
    spatial = []
    if SPATIAL["enabled"]:
        if SPATIAL["units"]:
            spatial += [
                dict(dataset=d, model=m, hook=h, layer=layer, source="units")
                for d, m in pairs(SPATIAL) for h in SPATIAL["hooks"] for layer in SPATIAL["layers"]
            ]
        analysed = set(pairs(SPATIAL))
        spatial += [dict({k: v for k, v in j.items() if k != "run"}, source=f"sae-{j['run']}") for j in sae
                    if (j["dataset"], j["model"]) in analysed]
        spatial += [dict({k: v for k, v in j.items() if k != "run"}, source=f"snmf-{j['run']}") for j in snmf
                    if (j["dataset"], j["model"]) in analysed]
    probes = [
        dict(dataset=d, model=m, hook=h)
        for d, m in pairs(PROBES) for h in PROBES["hooks"]
    ] if PROBES["enabled"] else []
    return {
        "prompts": [dict(dataset=d, path=PROMPTS.format(dataset=d)) for d in DATASETS],
        "activations": [
            dict(dataset=d, model=m, hook=h, path=ACTIVATIONS.format(dataset=d, model=m, hook=h))
            for d, m in pairs() for h in EXTRACT["hooks"]
        ],
        "sae": [dict(j, dir=SAE_DIR.format(**j), splice=SAE_SPLICE.format(**j) if splices(j["model"]) else None)
                for j in sae],
        "snmf": [dict(j, path=SNMF_FILE.format(**j)) for j in snmf],
        "spatial": [
            dict(j, run=j["source"].partition("-")[2] or None, kind=j["source"].partition("-")[0],
                 moran=MORAN.format(**j), lisa=LISA.format(**j) if SPATIAL["lisa_top_n"] > 0 else None)
            for j in spatial
        ],
        "probes": [dict(j, path=PROBE_FILE.format(**j)) for j in probes],
        "lens": lens_jobs(config, ROOT),  # tuned lenses, latent-language and consistency files (rules/lens.smk)
        "steering": steering_jobs(config, ROOT),  # one per (prompt set, causal LM, vector) (rules/steer.smk)
        "selection": selection_jobs(config, ROOT),  # ranking.nc + ranking.csv per selection (rules/select.smk)
    }


JOBS = _study_jobs()


def outputs_of(step, entry):
    """The files one manifest entry stands for."""
    if step == "sae":
        return [f"{entry['dir']}/{name}" for name in SAE_FILES] + ([entry["splice"]] if entry.get("splice") else [])
    if step == "spatial":
        return [f for f in (entry["moran"], entry["lisa"]) if f]
    if step == "selection":
        return [entry["path"], entry["csv"]]
    return [entry["path"]]


def report_inputs():
    return [f for step, entries in JOBS.items() for e in entries for f in outputs_of(step, e)]


def all_targets():
    """Every result of the study (each pulls in what it needs), and the report."""
    return report_inputs() + ([REPORT_HTML] if REPORT["enabled"] else [])


def snmf_input(wildcards):
    return (TOKENS if SNMF["level"] == "tokens" else ACTIVATIONS).format(**wildcards)


def sae_input(wildcards):
    """The file an SAE trains on: pooled activations, or the hook's token file (sae.level: tokens)."""
    return (TOKENS if SAE["level"] == "tokens" else ACTIVATIONS).format(**wildcards)


def sae_level_params():
    """What the SAE trains on (sae.level) and, at token level, how features.nc pools each prompt's tokens."""
    if SAE["level"] == "tokens":
        return canonical({"level": "tokens", "token_pooling": SAE["token_pooling"]})
    return canonical({"level": "pooled"})


def spatial_input(wildcards):
    """The feature set a spatial job analyses, by its source wildcard."""
    kind, _, run = wildcards.source.partition("-")
    job = dict(wildcards.items(), run=run)
    if kind == "units":
        return ACTIVATIONS.format(**job)
    if kind == "sae":
        return f"{SAE_DIR}/features.nc".format(**job)
    return SNMF_FILE.format(**job)


def study_summary():
    """What this study runs, printed at the start of a run: datasets, models, jobs per step."""
    pooled = {(e["dataset"], e["model"]) for e in JOBS["activations"]}
    pooled |= {(e["dataset"], e["model"]) for e in JOBS["probes"]}
    pooled |= {(e["dataset"], e["model"]) for e in JOBS["spatial"] if e["kind"] == "units"}
    tokens = {TOKENS.format(**e) for step, section in (("snmf", SNMF), ("sae", SAE)) if section["level"] == "tokens"
              for e in JOBS[step]}
    pooled |= {(e["dataset"], e["model"]) for step, section in (("snmf", SNMF), ("sae", SAE)) if section["level"] != "tokens"
               for e in JOBS[step]}
    steps = Counter(prompts=len(DATASETS))
    if EXTRACT["shards"] == 1:
        steps["extract"] = len(pooled)  # one job per (dataset, model): every pooled hook in one pass
    else:
        steps["extract_shard"], steps["gather_activations"] = len(pooled) * EXTRACT["shards"], len(pooled) * len(POOLED_HOOKS)
    steps["extract_tokens"] = len(tokens)
    for step in ("sae", "snmf", "spatial", "probes"):
        steps[step] = len(JOBS[step])
    steps["sae_splice"] = sum(1 for e in JOBS["sae"] if e.get("splice"))
    steps.update(Counter(e["kind"] for e in JOBS["lens"]), lens_prompts=len(lens_sets(config)) if JOBS["lens"] else 0)
    steps["steer"] = len(JOBS["steering"])
    steps["select"] = len(JOBS["selection"])
    steps["report"] = int(REPORT["enabled"])
    steps = {k: v for k, v in steps.items() if v}
    return (
        f"mechflow study: datasets {', '.join(DATASETS)}; models {', '.join(MODELS)}; "
        f"{sum(steps.values())} jobs in the whole study ({', '.join(f'{k} {v}' for k, v in steps.items())}); "
        f"results under {ROOT}/ (Snakemake runs only those that are missing or out of date)"
    )


# ---- canonical params ------------------------------------------------------------------------------


def extract_params(wildcards):
    """Pooled extraction of every hook of POOLED_HOOKS in one pass (hook -> layers)."""
    return canonical({
        "model": model_params(config, wildcards.model),
        "hooks": {hook: layers_for(hook) for hook in POOLED_HOOKS},
        "pooling": EXTRACT["pooling"],
        "exclude": EXTRACT["exclude"],
        "keep_sink": EXTRACT["keep_sink"],
        "batch_size": EXTRACT["batch_size"],
        "max_length": EXTRACT["max_length"],
    })


def splice_params(wildcards):
    """The model as extraction runs it, and the splice's prompt budget (sae.splice_prompts)."""
    return canonical({
        "model": model_params(config, wildcards.model),
        "exclude": EXTRACT["exclude"],
        "batch_size": EXTRACT["batch_size"],
        "max_length": EXTRACT["max_length"],
        "max_prompts": SAE["splice_prompts"],
    })


def token_extract_params(wildcards):
    """Token-level extraction of one hook; it does not pool: pooling and the pooled sink are not among its parameters."""
    params = {k: v for k, v in extract_params(wildcards).items() if k not in ("pooling", "keep_sink", "hooks")}
    return canonical(dict(params, hook=wildcards.hook, layers=layers_for(wildcards.hook)))


def settings(section, *keys):
    """Canonical params of a config section: the given keys, else all but the resource keys."""
    keys = keys or [k for k in section if k not in RESOURCE_KEYS]
    return canonical({k: section[k] for k in keys})


def study_settings():
    """The whole study without resource settings (shown in the report; threads or memory change no result)."""
    return canonical({
        name: section if name in ("datasets", "models") or not isinstance(section, dict)
        else {k: v for k, v in section.items() if k not in RESOURCE_KEYS}
        for name, section in config.items()
    })
