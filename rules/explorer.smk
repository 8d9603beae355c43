rule explorer:
    """The static, offline feature explorer of one feature set (an SAE run, a semi-NMF run or raw units)."""
    input:
        unpack(lambda wc: explorer_step.inputs(config, FACTS, dict(wc.items()))),
    output:
        directory(EXPLORER),
    params:
        explorer=lambda wc: explorer_step.params(config, FACTS, wc.model, wc.source),
        code=code("explorer"),
    log:
        f"{LOGS}/explorer/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{source}}.log",
    benchmark:
        f"{BENCHMARKS}/explorer/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{source}}.tsv"
    threads: config["explorer"]["threads"]
    resources:
        mem_mb=config["explorer"]["mem_mb"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/explorer.py"
