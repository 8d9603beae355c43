rule sae:
    """Train one named SAE run on one layer's pooled activations."""
    input:
        ACTIVATIONS,
    output:
        expand(f"{SAE_DIR}/{{name}}", name=SAE_FILES, allow_missing=True),
    params:
        run=lambda wc: canonical(SAE["runs"][wc.run]),
        checkpoints=lambda wc: SAE_CHECKPOINTS.format(**wc),
        kernels=config["kernels"],
        code=code("sae"),
    log:
        f"{LOGS}/sae/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/sae/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.tsv"
    threads: SAE["threads"]
    resources:
        mem_mb=SAE["mem_mb"],
        gpu=SAE["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/sae.py"
