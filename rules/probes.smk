rule probes:
    """Cross-validated ridge probes from each layer to location (random vs spatially blocked folds)."""
    input:
        ACTIVATIONS,
    output:
        PROBE_FILE,
    params:
        probes={k: PROBES[k] for k in ("layers", "folds", "blocks", "alphas", "seed")},
        crs=SPATIAL["crs"],
        code=lambda wc: code("probes"),
    log:
        "results/logs/probes/{dataset}/{model}/{hook}.log",
    benchmark:
        "results/benchmarks/probes/{dataset}/{model}/{hook}.tsv"
    threads: 2
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/probes.py"
