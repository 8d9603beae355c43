# Shared helpers: result paths, per-rule code digests, the list of final targets.

from mechflow.workflow import code_digest

RESULTS = "results"  # every output lives under this folder
EXTRACT = config["extract"]
DATASETS = sorted(config["datasets"])
MODELS = sorted(config["models"])
HOOKS = list(EXTRACT["hooks"])

PROMPTS = "results/prompts/{dataset}.nc"
ACTIVATIONS = "results/activations/{dataset}/{model}/{hook}.nc"

# Digests of the library code behind each step; editing that code reruns the step and its dependants.
CODE = {
    "prompts": code_digest("mechflow.data", "mechflow.io"),
    "extract": code_digest("mechflow.extract", "mechflow.hooks", "mechflow.models", "mechflow.io"),
}


def model_weight_files(wildcards):
    """The model's weight files: a changed or reinstalled model reruns extraction."""
    from mechflow.models import resolve_model

    return [str(p) for p in resolve_model(config["models"][wildcards.model]["spec"]).weight_files]


def all_targets():
    return expand(ACTIVATIONS, dataset=DATASETS, model=MODELS, hook=HOOKS)


def extract_params(wildcards):
    model = config["models"][wildcards.model]
    return {
        "model": {k: model[k] for k in ("spec", "dtype", "device", "random_init", "init_seed")},
        "hook": wildcards.hook,
        "layers": EXTRACT["layers"],
        "pooling": EXTRACT["pooling"],
        "batch_size": EXTRACT["batch_size"],
        "max_length": EXTRACT["max_length"],
    }
