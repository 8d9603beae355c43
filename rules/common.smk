# Shared helpers: result paths, per-rule code digests, the list of final targets.

from mechflow.workflow import code_digest

RESULTS = "results"  # every output lives under this folder
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

PROMPTS = "results/prompts/{dataset}.nc"
ACTIVATIONS = "results/activations/{dataset}/{model}/{hook}.nc"
TOKENS = "results/activations/{dataset}/{model}/{hook}.tokens.nc"
SAE_DIR = "results/sae/{dataset}/{model}/{hook}/layer{layer}/{run}"
SAE_FILES = ("sae.safetensors", "cfg.json", "features.nc", "training.nc")
SNMF_FILE = "results/snmf/{dataset}/{model}/{hook}/layer{layer}/{run}.nc"
MORAN = "results/spatial/{dataset}/{model}/{hook}/layer{layer}/{source}/moran.nc"
LISA = "results/spatial/{dataset}/{model}/{hook}/layer{layer}/{source}/lisa.nc"
PROBE_FILE = "results/probes/{dataset}/{model}/{hook}.nc"
REPORT_HTML = "results/report/index.html"

# Library code behind each step: its digest is a param, so editing that code reruns the step and its dependants.
CODE_MODULES = {
    "prompts": ("mechflow.data", "mechflow.io"),
    "extract": ("mechflow.extract", "mechflow.hooks", "mechflow.models", "mechflow.io"),
    "sae": ("mechflow.sae", "mechflow.kernels", "mechflow.io"),
    "snmf": ("mechflow.snmf", "mechflow.kernels", "mechflow.analysis", "mechflow.io"),
    "spatial": ("mechflow.spatial", "mechflow.analysis", "mechflow.data.regions", "mechflow.io"),
    "probes": ("mechflow.probes", "mechflow.spatial", "mechflow.analysis", "mechflow.data.regions", "mechflow.io"),
    "report": ("mechflow.report", "mechflow.spatial", "mechflow.io"),
}
_CODE_CACHE = {}


def code(step):
    """Digest of the library code behind a step (computed once, only for steps that run)."""
    if step not in _CODE_CACHE:
        _CODE_CACHE[step] = code_digest(*CODE_MODULES[step])
    return _CODE_CACHE[step]


def model_weight_files(wildcards):
    """The model's weight files: a changed or reinstalled model reruns extraction."""
    from mechflow.models import resolve_model

    return [str(p) for p in resolve_model(config["models"][wildcards.model]["spec"]).weight_files]


def token_extract_params(wildcards):
    """Token-level extraction does not pool: pooling is not among its parameters."""
    return {k: v for k, v in extract_params(wildcards).items() if k != "pooling"}


def models_of(section):
    return sorted(section["models"]) if section.get("models") else MODELS


def layers_for(hook):
    """The layers extracted for a hook ('all' or a list)."""
    return EXTRACT["hook_layers"].get(hook, EXTRACT["layers"])


def sae_jobs():
    """(dataset, model, hook, layer, run) of every SAE run."""
    return [
        dict(dataset=d, model=m, hook=SAE["hook"], layer=layer, run=r)
        for d in DATASETS for m in models_of(SAE) for layer in SAE["layers"] for r in sorted(SAE["runs"])
    ]


def snmf_jobs():
    return [
        dict(dataset=d, model=m, hook=SNMF["hook"], layer=layer, run=r)
        for d in DATASETS for m in models_of(SNMF) for layer in SNMF["layers"] for r in sorted(SNMF["runs"])
    ]


def spatial_jobs():
    """(dataset, model, hook, layer, source) of every spatial analysis: raw units, SAE features, semi-NMF factors."""
    if not SPATIAL["enabled"]:
        return []
    jobs = []
    if SPATIAL["units"]:
        jobs += [
            dict(dataset=d, model=m, hook=h, layer=layer, source="units")
            for d in DATASETS for m in models_of(SPATIAL) for h in SPATIAL["hooks"] for layer in SPATIAL["layers"]
        ]
    jobs += [dict(j, source=f"sae-{j.pop('run')}") for j in sae_jobs()]
    jobs += [dict(j, source=f"snmf-{j.pop('run')}") for j in snmf_jobs()]
    return jobs


def probe_jobs():
    if not PROBES["enabled"]:
        return []
    return [dict(dataset=d, model=m, hook=h) for d in DATASETS for m in models_of(PROBES) for h in PROBES["hooks"]]


def snmf_input(wildcards):
    return (TOKENS if SNMF["level"] == "tokens" else ACTIVATIONS).format(**wildcards)


def sae_outputs(job):
    return [f"{SAE_DIR}/{name}".format(**job) for name in SAE_FILES]


def spatial_input(wildcards):
    """The feature set a spatial job analyses, by its source wildcard."""
    kind, _, run = wildcards.source.partition("-")
    job = dict(wildcards.items(), run=run)
    if kind == "units":
        return ACTIVATIONS.format(**job)
    if kind == "sae":
        return f"{SAE_DIR}/features.nc".format(**job)
    return SNMF_FILE.format(**job)


def manifest():
    """What the report reads: every result file with its wildcards (JSON-friendly)."""
    return {
        "prompts": [dict(dataset=d, path=PROMPTS.format(dataset=d)) for d in DATASETS],
        "activations": [
            dict(dataset=d, model=m, hook=h, path=ACTIVATIONS.format(dataset=d, model=m, hook=h))
            for d in DATASETS for m in MODELS for h in EXTRACT["hooks"]
        ],
        "spatial": [
            dict(j, run=j["source"].partition("-")[2] or None, kind=j["source"].partition("-")[0],
                 moran=MORAN.format(**j), lisa=LISA.format(**j) if SPATIAL["lisa_top_n"] > 0 else None)
            for j in spatial_jobs()
        ],
        "probes": [dict(j, path=PROBE_FILE.format(**j)) for j in probe_jobs()],
        "sae": [dict(j, dir=SAE_DIR.format(**j)) for j in sae_jobs()],
        "snmf": [dict(j, path=SNMF_FILE.format(**j)) for j in snmf_jobs()],
    }


def report_inputs():
    m = manifest()
    files = [e["path"] for key in ("prompts", "activations", "probes", "snmf") for e in m[key]]
    files += [e["moran"] for e in m["spatial"]] + [e["lisa"] for e in m["spatial"] if e["lisa"]]
    files += [f for j in sae_jobs() for f in sae_outputs(j)]
    return files


def all_targets():
    """Activations of extract.hooks for every model, and every analysis (which pull in what they need)."""
    targets = expand(ACTIVATIONS, dataset=DATASETS, model=MODELS, hook=EXTRACT["hooks"])
    targets += [f for j in sae_jobs() for f in sae_outputs(j)]
    targets += [SNMF_FILE.format(**j) for j in snmf_jobs()]
    targets += [MORAN.format(**j) for j in spatial_jobs()]
    targets += [PROBE_FILE.format(**j) for j in probe_jobs()]
    if REPORT["enabled"]:
        targets.append(REPORT_HTML)
    return targets


def extract_params(wildcards):
    model = config["models"][wildcards.model]
    return {
        "model": {k: model[k] for k in ("spec", "dtype", "device", "random_init", "init_seed")},
        "hook": wildcards.hook,
        "layers": layers_for(wildcards.hook),
        "pooling": EXTRACT["pooling"],
        "batch_size": EXTRACT["batch_size"],
        "max_length": EXTRACT["max_length"],
    }
