# The lens step (mechflow.lens): read every layer through the model's own final norm and unembedding.
# Prompt sets (the {dataset} wildcard here): the word-translation set (lens.latent_language.name) and the
# multiple-choice question sets (lens.consistency); see mechflow.steps.lens.

LENS = config["lens"]
LENS_PROMPTS = path("lens_prompts")
TUNED_LENS = path("tuned_lens")
TUNED_TRAINING = path("tuned_lens_training")
LATENT_LANGUAGE = path("latent_language")
CONSISTENCY = path("consistency")
LENS_SETS = lens_step.lens_sets(config)
#: settings of every read-out (the translators' file is an input where the tuned lens is asked for)
LENS_READ = lens_step.read_settings(config)


rule lens_prompts:
    """Build a lens prompt set: few-shot word translations, or multiple-choice questions (placenames or a CSV)."""
    input:
        lambda wc: lens_step.prompt_set_inputs(config, wc.dataset),
    output:
        LENS_PROMPTS,
    params:
        spec=lambda wc: canonical(lens_step.prompt_set_spec(config, wc.dataset)),
        code=code("lens_prompts"),
    wildcard_constraints:
        dataset=one_of(LENS_SETS),
    log:
        f"{LOGS}/lens_prompts/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/lens_prompts/{{dataset}}.tsv"
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/lens_prompts.py"


rule tuned_lens:
    """Fit one affine translator per layer by KL to the final layer, on token positions of every lens prompt set."""
    input:
        prompts=expand(LENS_PROMPTS, dataset=LENS_SETS),
        model=model_files,
    output:
        weights=TUNED_LENS,
        training=TUNED_TRAINING,
    params:
        model=lambda wc: lens_step.model_settings(config, wc.model),
        tuned=lens_step.tuned_settings(config),
        read=lens_step.read_settings(config, "batch_size", "max_length", "chunk_mb"),
        code=code("lens_tuned"),
    log:
        f"{LOGS}/tuned_lens/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/tuned_lens/{{model}}.tsv"
    threads: LENS["threads"]
    resources:
        mem_mb=LENS["mem_mb"],
        gpu=LENS["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/lens_tuned.py"


rule latent_language:
    """Per layer and prompt: probability and rank of the answer in the target language, in English and in the source."""
    input:
        prompts=LENS_PROMPTS,
        tuned=lambda wc: lens_step.tuned_lens_inputs(config, ROOT, wc.model),
        model=model_files,
    output:
        LATENT_LANGUAGE,
    params:
        model=lambda wc: lens_step.model_settings(config, wc.model),
        read=LENS_READ,
        answer_tokens=LENS["latent_language"]["answer_tokens"],
        code=code("latent_language"),
    wildcard_constraints:
        dataset=one_of([LENS["latent_language"]["name"]] if LENS["latent_language"]["enabled"] else []),
    log:
        f"{LOGS}/latent_language/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/latent_language/{{dataset}}/{{model}}.tsv"
    threads: LENS["threads"]
    resources:
        mem_mb=LENS["mem_mb"],
        gpu=LENS["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/latent_language.py"


rule consistency:
    """Latent answer of every layer, internal consistency, its calibration curve and (with sampling) weighted voting."""
    input:
        prompts=LENS_PROMPTS,
        tuned=lambda wc: lens_step.tuned_lens_inputs(config, ROOT, wc.model),
        model=model_files,
    output:
        CONSISTENCY,
    params:
        model=lambda wc: lens_step.model_settings(config, wc.model),
        read=LENS_READ,
        consistency=lens_step.consistency_settings(config),
        code=code("consistency"),
    wildcard_constraints:
        dataset=one_of(list(lens_step.consistency_sets(config)) if LENS_SETS else []),
    log:
        f"{LOGS}/consistency/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/consistency/{{dataset}}/{{model}}.tsv"
    threads: LENS["threads"]
    resources:
        mem_mb=LENS["mem_mb"],
        gpu=LENS["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/consistency.py"
