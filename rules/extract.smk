if not extract_step.sharded(config):

    rule extract:
        """Run the model over every prompt once and pool activations at every hook point the study reads."""
        input:
            prompts=PROMPTS,
            model=model_files,
        output:
            **{hook: ACTIVATIONS.replace("{hook}", hook) for hook in POOLED_HOOKS},
        params:
            extract=lambda wc: extract_step.params(config, wc.model),
            shard=None,
            code=code("extract"),
        log:
            f"{LOGS}/extract/{{dataset}}/{{model}}.log",
        benchmark:
            f"{BENCHMARKS}/extract/{{dataset}}/{{model}}.tsv"
        threads: EXTRACT["threads"]
        priority: PRIORITY["extract"]
        resources:
            mem_mb=EXTRACT["mem_mb"],
            gpu=EXTRACT["gpu"],
        conda:
            "../envs/mechflow.yaml"
        script:
            "../scripts/extract.py"

else:

    rule extract_shard:
        """Extract one contiguous slice of the prompts (scale-out on a cluster)."""
        input:
            prompts=PROMPTS,
            model=model_files,
        output:
            **{hook: temp(SHARD.replace("{hook}", hook)) for hook in POOLED_HOOKS},
        params:
            extract=lambda wc: extract_step.params(config, wc.model),
            shard=lambda wc: [int(wc.shard), EXTRACT["shards"]],
            code=code("extract"),
        log:
            f"{LOGS}/extract/{{dataset}}/{{model}}.shard{{shard}}.log",
        benchmark:
            f"{BENCHMARKS}/extract/{{dataset}}/{{model}}.shard{{shard}}.tsv"
        threads: EXTRACT["threads"]
        priority: PRIORITY["extract"]
        resources:
            mem_mb=EXTRACT["mem_mb"],
            gpu=EXTRACT["gpu"],
        conda:
            "../envs/mechflow.yaml"
        script:
            "../scripts/extract.py"

    rule gather_activations:
        """Concatenate the extraction shards along the prompt dimension."""
        input:
            prompts=PROMPTS,
            shards=expand(SHARD, shard=range(EXTRACT["shards"]), allow_missing=True),
        output:
            ACTIVATIONS,
        params:
            code=code("gather_activations"),
        log:
            f"{LOGS}/extract/{{dataset}}/{{model}}/{{hook}}.gather.log",
        benchmark:
            f"{BENCHMARKS}/extract/{{dataset}}/{{model}}/{{hook}}.gather.tsv"
        conda:
            "../envs/mechflow.yaml"
        script:
            "../scripts/gather_activations.py"


rule extract_tokens:
    """Token-level activations at one hook point (every real token of every prompt)."""
    input:
        prompts=PROMPTS,
        model=model_files,
    output:
        TOKENS,
    params:
        extract=lambda wc: extract_step.token_params(config, JOBS, wc.dataset, wc.model, wc.hook),
        shard=None,
        tokens=True,
        code=code("extract"),
    log:
        f"{LOGS}/extract/{{dataset}}/{{model}}/{{hook}}.tokens.log",
    benchmark:
        f"{BENCHMARKS}/extract/{{dataset}}/{{model}}/{{hook}}.tokens.tsv"
    threads: EXTRACT["threads"]
    priority: PRIORITY["extract"]
    resources:
        mem_mb=EXTRACT["mem_mb"],
        gpu=EXTRACT["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/extract.py"


rule name_positions:
    """Activations at the name's last token and the mean over its tokens, per prompt, from the token-level file."""
    input:
        prompts=PROMPTS,
        tokens=TOKENS,
    output:
        **{p: path("name_positions").replace("{position}", p) for p in spatial_step.NAME_POSITIONS},
    params:
        names=lambda wc: spatial_step.name_params(config, wc.dataset, wc.model, wc.hook),
        code=code("name_positions"),
    log:
        f"{LOGS}/extract/{{dataset}}/{{model}}/{{hook}}.name_positions.log",
    benchmark:
        f"{BENCHMARKS}/extract/{{dataset}}/{{model}}/{{hook}}.name_positions.tsv"
    resources:
        mem_mb=EXTRACT["mem_mb"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/name_positions.py"
