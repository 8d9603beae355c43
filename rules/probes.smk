rule probes:
    """Cross-validated ridge probes from each layer to location (random vs spatially blocked folds)."""
    input:
        ACTIVATIONS,
    output:
        PROBE_FILE,
    params:
        probes=probes_step.params(config),
        crs=study_crs(config),
        code=code("probes"),
    log:
        f"{LOGS}/probes/{{dataset}}/{{model}}/{{hook}}.log",
    benchmark:
        f"{BENCHMARKS}/probes/{{dataset}}/{{model}}/{{hook}}.tsv"
    threads: PROBES["threads"]
    resources:
        mem_mb=PROBES["mem_mb"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/probes.py"
