rule snmf:
    """Semi-NMF of one layer's activations: units ~ F G^T, G >= 0, F sparse per factor."""
    input:
        snmf_input,
    output:
        SNMF_FILE,
    params:
        run=lambda wc: canonical(SNMF["runs"][wc.run]),
        top_prompts=SNMF["top_prompts"],
        level=SNMF["level"],
        device=SNMF["device"],
        kernels=config["kernels"],
        code=code("snmf"),
    log:
        f"{LOGS}/snmf/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/snmf/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.tsv"
    threads: SNMF["threads"]
    resources:
        mem_mb=SNMF["mem_mb"],
        gpu=SNMF["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/snmf.py"
