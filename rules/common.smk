# Path binding for every rule: result path templates (mechflow.contracts), the study's job manifest, code digests.
# What each step runs, with which params and inputs, comes from its module mechflow.steps.<step>; this file and
# rules/<step>.smk only bind those to paths. One manifest (JOBS) lists every analysis job of the study; the final
# targets, the report's inputs and the start-of-run summary all derive from it.

from mechflow.contracts import SAE_CORPUS_FILES, SAE_FILES, result_path
from mechflow.models import model_input_files
from mechflow.steps import corpus as corpus_step
from mechflow.steps import data as data_step
from mechflow.steps import explorer as explorer_step
from mechflow.steps import extract as extract_step
from mechflow.steps import lens as lens_step
from mechflow.steps import probes as probes_step
from mechflow.steps import report as report_step
from mechflow.steps import sae as sae_step
from mechflow.steps import selection as selection_step
from mechflow.steps import snmf as snmf_step
from mechflow.steps import spatial as spatial_step
from mechflow.steps import steering as steering_step
from mechflow.steps.manifest import manifest, report_inputs, summary
from mechflow.study import canonical, corpora, one_of, prompt_sets, settings, study_crs
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
HOOKS = extract_step.hooks(config)  # every hook some step reads
POOLED_HOOKS = extract_step.pooled_hooks(config)  # read pooled: one extraction job per (dataset, model) writes them all
#: Snakemake ``priority:`` of the steps on the longest path of a study (extract -> sae -> sae_splice -> report):
#: of the jobs ready at one time these start first, so a long SAE job overlaps the many short spatial ones
#: instead of waiting for them (the order of jobs, never what they compute)
PRIORITY = {"extract": 10, "sae": 20, "sae_splice": 10}


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
SAE_CORPUS_DIR = path("sae_corpus_dir")
SAE_CORPUS_CHECKPOINTS = path("sae_corpus_checkpoints")
SAE_CORPUS_SPLICE = path("sae_corpus_splice")
SNMF_FILE = path("snmf")
MORAN = path("moran")
LISA = path("lisa")
PROBE_FILE = path("probes")
EXPLORER = path("explorer")
REPORT_HTML = path("report")
REPORT_FIGURES = path("report_figures")
REPORT_TABLE = path("report_table")
LOGS = path("logs")
BENCHMARKS = path("benchmarks")

_CODE = {}


def code(script):
    """Digest of the mechflow code a rule script runs (its imports, followed through the package)."""
    if script not in _CODE:
        _CODE[script] = script_code_digest(WORKFLOW_DIR / "scripts" / f"{script}.py")
    return _CODE[script]


def model_files(wildcards):
    """Every file the model loads from (weights, config, tokenizer): a changed model reruns extraction."""
    return model_input_files(config["models"][wildcards.model]["spec"])


JOBS = manifest(config, FACTS)


def all_targets():
    """Every result of the study (each pulls in what it needs), and the report."""
    return report_inputs(JOBS) + ([REPORT_HTML] if REPORT["enabled"] else [])
