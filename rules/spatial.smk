UNIT_LAYERS = spatial_step.unit_layers(config)  # every layer of a hook's raw units is tested in one spatial_units job

if UNIT_LAYERS:

    rule spatial_units:
        """Moran's I, Geary's C (+ controls) and LISA of a hook's raw units (pooled, or at a name position) at every
        layer of spatial.layers, per region: one job reads the file and starts the engine once for all layers."""
        input:
            lambda wc: spatial_step.input_path(config, dict(wc.items())),
        output:
            **{f"moran_{layer}": MORAN.replace("{layer}", str(layer)) for layer in UNIT_LAYERS},
            **{f"lisa_{layer}": LISA.replace("{layer}", str(layer)) for layer in UNIT_LAYERS},
        params:
            spatial=spatial_step.params(config),
            layers=UNIT_LAYERS,
            sink_control=lambda wc: spatial_step.sink_control(config, wc.dataset, wc.model),
            code=code("spatial"),
        wildcard_constraints:
            source=spatial_step.UNIT_SOURCES,
        log:
            f"{LOGS}/spatial_units/{{dataset}}/{{model}}/{{hook}}/{{source}}.log",
        benchmark:
            f"{BENCHMARKS}/spatial_units/{{dataset}}/{{model}}/{{hook}}/{{source}}.tsv"
        threads: SPATIAL["threads"]
        resources:
            mem_mb=SPATIAL["mem_mb"],
            gpu=SPATIAL["gpu"],
        conda:
            "../envs/mechflow.yaml"
        script:
            "../scripts/spatial.py"


rule spatial:
    """Moran's I, Geary's C (+ shuffled-coordinates control) and LISA of one SAE run's or semi-NMF run's features at
    one layer, per region."""
    input:
        lambda wc: spatial_step.input_path(config, dict(wc.items())),
    output:
        moran=MORAN,
        lisa=LISA,
    params:
        spatial=spatial_step.params(config),
        sink_control=lambda wc: spatial_step.sink_control(config, wc.dataset, wc.model),
        code=code("spatial"),
    wildcard_constraints:
        source=spatial_step.RUN_SOURCES,
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
