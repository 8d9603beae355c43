rule snmf:
    """Semi-NMF of one layer's activations: units ~ F G^T, G >= 0, F sparse per factor."""
    input:
        lambda wc: snmf_step.input_path(config, dict(wc.items())),
    output:
        SNMF_FILE,
    params:
        run=lambda wc: snmf_step.run_params(config, wc.run),
        **snmf_step.params(config),
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
