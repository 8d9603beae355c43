# The selection step (mechflow.selection, docs/selection.md): rank candidate prompts by how much of a target task's
# SAE features they share (MoNA, Ma et al. 2025: generalized Jaccard to the target prototype), with raw-activation,
# SAE-cosine and sentence-embedding baselines. Selections are named under selection.runs (the {name} wildcard);
# each reads one SAE the study trains.

SELECTION = config["selection"]
SELECTION_RANKING = path("selection")
SELECTION_CSV = path("selection_csv")


rule select:
    """Rank one selection's candidates by generalized Jaccard similarity of their mean SAE codes to the target's prototype."""
    input:
        unpack(lambda wc: selection_step.selection_inputs(config, ROOT, wc.name)),
    output:
        ranking=SELECTION_RANKING,
        csv=SELECTION_CSV,
    params:
        selection=lambda wc: selection_step.selection_params(config, wc.name),
        code=code("selection"),
    wildcard_constraints:
        name=one_of(selection_step.selection_names(config)),
    log:
        f"{LOGS}/select/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/select/{{name}}.tsv"
    threads: SELECTION["threads"]
    resources:
        mem_mb=SELECTION["mem_mb"],
        gpu=SELECTION["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/selection.py"
