rule prompts:
    """Build a prompt set (placenames with coordinates, or a user's CSV / xarray file)."""
    input:
        prompt_source_files,
    output:
        PROMPTS,
    params:
        dataset=lambda wc: canonical(config["datasets"][wc.dataset]),
        code=code("prompts"),
    log:
        f"{LOGS}/prompts/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/prompts/{{dataset}}.tsv"
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/prompts.py"
