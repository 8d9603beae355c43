rule spatial:
    """Moran's I, Geary's C (+ shuffled-coordinates control) and LISA of one feature set, per region."""
    input:
        spatial_input,
    output:
        moran=MORAN,
        lisa=LISA,
    params:
        spatial=canonical(dict(settings(SPATIAL, "k", "transform", "permutations", "seed", "lisa_top_n", "shuffled_control", "residualise"), crs=CRS)),
        sink_control=lambda wc: is_main(config, wc.dataset, wc.model),
        code=code("spatial"),
    log:
        f"{LOGS}/spatial/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{source}}.log",
    benchmark:
        f"{BENCHMARKS}/spatial/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{source}}.tsv"
    threads: SPATIAL["threads"]
    resources:
        mem_mb=SPATIAL["mem_mb"],
        gpu=SPATIAL["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/spatial.py"
