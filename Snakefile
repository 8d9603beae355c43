# mechflow: mechanistic interpretability as a reproducible workflow.
#   snakemake -c all                          # the default study (config.yaml)
#   snakemake -c all --configfile my.yaml     # your study: my.yaml is the whole study, nothing is merged in
#   snakemake -c all -n                       # what would run, and why
# The study is validated against config.schema.yaml and resolved (defaults filled, keys sorted) before any
# job runs; `mechflow config --resolved my.yaml` prints what this file sees.

import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.20")

#: this Snakefile's folder (a checkout, or mechflow/workflow_files of an installed wheel); not workflow.basedir,
#: which is the outer workflow's folder when another workflow uses this one as a module
WORKFLOW_DIR = Path(workflow.current_basedir.get_path_or_uri(secret_free=True))
if (WORKFLOW_DIR / "mechflow").is_dir():
    sys.path.insert(0, str(WORKFLOW_DIR))  # the mechflow package of this checkout

from mechflow.config import DEFAULT_STUDY, SCHEMA_FILE, check_study_files, workflow_study
from mechflow.resolve import resolve
from mechflow.results_owner import check_owner, claim, study_name
from mechflow.study import ConfigError


# No `configfile:` directive: Snakemake would deep-merge a --configfile into it. The default study is
# read only when no --configfile is given.
try:
    # Snakemake has read the --configfile(s) already, with a loader that builds Python objects from
    # !!python/... tags: read them again with the safe loader, before anything here uses a value
    check_study_files(workflow.overwrite_configfiles)
    _resolved = resolve(
        workflow_study(config, workflow.overwrite_configfiles, WORKFLOW_DIR / DEFAULT_STUDY),
        base_dir=Path.cwd(),
        schema_path=WORKFLOW_DIR / SCHEMA_FILE,
        data_checks=workflow.is_main_process,  # job processes re-read a study the main process checked
    )
    STUDY = study_name(workflow.overwrite_configfiles, WORKFLOW_DIR / DEFAULT_STUDY, Path.cwd())
    if workflow.is_main_process:  # one study per results folder: never another study's results or report
        check_owner(_resolved.study["results"], STUDY, Path.cwd())
        for _warning in _resolved.warnings:
            print(f"mechflow: warning at {_warning}", file=sys.stderr)
except ConfigError as _err:
    sys.exit(f"mechflow: {_err}")
validate(_resolved.study, str(WORKFLOW_DIR / SCHEMA_FILE), set_default=False)  # snakemake's own validator on the same schema: a second, independent check
config.clear()
config.update(_resolved.study)
FACTS = _resolved.facts  # the study's models and prompt sets (mechflow.facts), read once


report: "docs/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    hook="|".join(HOOKS),
    layer=r"\d+",
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    source=r"units|units-name_(?:last|mean)|sae-[A-Za-z0-9][A-Za-z0-9_.-]*|snmf-[A-Za-z0-9][A-Za-z0-9_.-]*",


include: "rules/data.smk"
include: "rules/corpus.smk"
include: "rules/extract.smk"
include: "rules/sae.smk"
include: "rules/snmf.smk"
include: "rules/spatial.smk"
include: "rules/probes.smk"
include: "rules/lens.smk"
include: "rules/steer.smk"
include: "rules/select.smk"
include: "rules/explorer.smk"
include: "rules/report.smk"


onstart:
    print(summary(config, JOBS), file=sys.stderr)
    claim(config["results"], STUDY)  # <results>/.mechflow-study: this folder is this study's (mechflow.results_owner)


rule all:
    input:
        all_targets(),
    default_target: True
