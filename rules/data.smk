rule prompts:
    """Build a prompt set (placenames with coordinates, or a user's CSV / xarray file)."""
    output:
        PROMPTS,
    params:
        dataset=lambda wc: config["datasets"][wc.dataset],
        code=lambda wc: code("prompts"),
    log:
        "results/logs/prompts/{dataset}.log",
    benchmark:
        "results/benchmarks/prompts/{dataset}.tsv"
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/prompts.py"
