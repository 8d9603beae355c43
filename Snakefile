# mechflow: mechanistic interpretability as a reproducible workflow.
#   snakemake -c all                          # the default study (config.yaml)
#   snakemake -c all --configfile my.yaml     # your study
#   snakemake -c all -n                       # what would run, and why
# The config is validated against config.schema.yaml before any job runs.

import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("8.20")

sys.path.insert(0, workflow.basedir)  # the mechflow package of this checkout

from mechflow.config import ConfigError, check_config


configfile: "config.yaml"


report: "docs/workflow.rst"


try:
    _checked = check_config(config, base_dir=Path.cwd(), schema_path=Path(workflow.basedir) / "config.schema.yaml")
except ConfigError as _err:
    sys.exit(f"mechflow: {_err}")
validate(config, "config.schema.yaml")  # snakemake's own validator on the same schema (fills defaults too)
config.update(_checked)


include: "rules/common.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    hook="|".join(HOOKS),
    layer=r"\d+",
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    source=r"units|sae-[A-Za-z0-9][A-Za-z0-9_.-]*|snmf-[A-Za-z0-9][A-Za-z0-9_.-]*",


include: "rules/data.smk"
include: "rules/extract.smk"
include: "rules/sae.smk"
include: "rules/snmf.smk"
include: "rules/spatial.smk"
include: "rules/probes.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
