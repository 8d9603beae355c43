rule sae_corpus:
    """Train one named SAE run on a text corpus's token activations at one layer (its level: corpus), once for every
    prompt set, and evaluate it on the corpus's held-out windows (training.nc heldout_*)."""
    input:
        unpack(lambda wc: sae_step.corpus_inputs(config, dict(wc.items()))),
    output:
        expand(f"{SAE_CORPUS_DIR}/{{name}}", name=SAE_CORPUS_FILES, allow_missing=True),
    params:
        run=lambda wc: sae_step.run_params(config, wc.run),
        checkpoints=lambda wc: SAE_CORPUS_CHECKPOINTS.format(**wc),
        kernels=config["kernels"],
        code=code("sae_corpus"),
    log:
        f"{LOGS}/sae_corpus/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/sae_corpus/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.tsv"
    threads: SAE["threads"]
    priority: PRIORITY["sae"]
    resources:
        mem_mb=SAE["mem_mb"],
        gpu=SAE["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/sae_corpus.py"


rule sae:
    """Train one named SAE run on one layer's pooled activations or its tokens (the run's level: tokens), or take the
    corpus SAE of that run (level corpus), then encode the prompts into features.nc."""
    input:
        unpack(lambda wc: sae_step.inputs(config, dict(wc.items()))),
    output:
        expand(f"{SAE_DIR}/{{name}}", name=SAE_FILES, allow_missing=True),
    params:
        run=lambda wc: sae_step.run_params(config, wc.run),
        level=lambda wc: sae_step.level_params(config, wc.run),
        heads=lambda wc: sae_step.head_params(config, wc.model, wc.hook),
        checkpoints=lambda wc: SAE_CHECKPOINTS.format(**wc),
        kernels=config["kernels"],
        code=code("sae"),
    log:
        f"{LOGS}/sae/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/sae/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.tsv"
    threads: SAE["threads"]
    priority: PRIORITY["sae"]
    resources:
        mem_mb=SAE["mem_mb"],
        gpu=SAE["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/sae.py"


rule sae_splice:
    """Loss recovered: the SAE's reconstruction spliced into its model's residual stream, on held-out prompts."""
    input:
        features=f"{SAE_DIR}/features.nc",
        weights=f"{SAE_DIR}/{SAE_FILES[0]}",
        cfg=f"{SAE_DIR}/cfg.json",
        prompts=PROMPTS,
        model=model_files,
    output:
        SAE_SPLICE,
    params:
        splice=lambda wc: sae_step.splice_params(config, wc.model),
        code=code("sae_splice"),
    log:
        f"{LOGS}/sae_splice/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/sae_splice/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.tsv"
    threads: EXTRACT["threads"]
    priority: PRIORITY["sae_splice"]
    resources:
        mem_mb=EXTRACT["mem_mb"],
        gpu=EXTRACT["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/sae_splice.py"


rule sae_corpus_splice:
    """CE loss recovered and KL over a text corpus's tokens: a corpus-level SAE's reconstruction spliced into its model's
    residual stream on the corpus's held-out windows."""
    input:
        weights=f"{SAE_CORPUS_DIR}/{SAE_CORPUS_FILES[0]}",
        cfg=f"{SAE_CORPUS_DIR}/cfg.json",
        windows=lambda wc: sae_step.corpus_splice_windows(config, wc.model),
        model=model_files,
    output:
        SAE_CORPUS_SPLICE,
    params:
        splice=lambda wc: sae_step.corpus_splice_params(config, wc.model),
        code=code("sae_corpus_splice"),
    log:
        f"{LOGS}/sae_corpus_splice/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/sae_corpus_splice/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{run}}.tsv"
    threads: EXTRACT["threads"]
    priority: PRIORITY["sae_splice"]
    resources:
        mem_mb=EXTRACT["mem_mb"],
        gpu=EXTRACT["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/sae_corpus_splice.py"
