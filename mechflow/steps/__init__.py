"""One module per step of a study: what jobs it runs, with which params and inputs, and what it checks.

Each ``mechflow.steps.<step>`` module reads the resolved study (a dict) and its
:class:`~mechflow.facts.StudyFacts` and nothing else: ``jobs(study, facts)`` lists the step's
job-manifest entries (wildcards and output paths), ``params`` / ``inputs`` give each job's
canonical Snakemake params and input files, ``check(study, facts, base_dir)`` raises one
:class:`~mechflow.study.ConfigError` for what the schema cannot say. ``rules/<step>.smk`` only binds
these to paths; :mod:`mechflow.steps.manifest` lists the steps in order and runs their checks.
Nothing here imports torch. Adding a step: docs/architecture.md.
"""
