rule prompts:
    """Build a prompt set (placenames with coordinates, or a user's CSV / xarray file)."""
    input:
        lambda wc: data_step.inputs(config, wc.dataset),
    output:
        PROMPTS,
    params:
        dataset=lambda wc: data_step.params(config, wc.dataset),
        code=code("prompts"),
    wildcard_constraints:
        dataset=one_of(prompt_sets(config)),
    log:
        f"{LOGS}/prompts/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/prompts/{{dataset}}.tsv"
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/prompts.py"
