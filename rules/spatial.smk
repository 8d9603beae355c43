rule spatial:
    """Moran's I, Geary's C (+ shuffled-coordinates control) and LISA of one feature set, per region."""
    input:
        lambda wc: spatial_step.input_path(config, dict(wc.items())),
    output:
        moran=MORAN,
        lisa=LISA,
    params:
        spatial=spatial_step.params(config),
        sink_control=lambda wc: spatial_step.sink_control(config, wc.dataset, wc.model),
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
