# The corpus step (mechflow.corpus, mechflow.steps.corpus): a text corpus (datasets.<name>.source: text) cut into
# token windows by each model's tokenizer, split into train and held-out by document.

CORPUS_WINDOWS = path("corpus_windows")


rule corpus:
    """Cut a text corpus into fixed-length token windows (train / held-out by document) with one model's tokenizer."""
    input:
        corpus=lambda wc: corpus_step.inputs(config, wc.dataset),
        model=model_files,
    output:
        CORPUS_WINDOWS,
    params:
        corpus=lambda wc: corpus_step.params(config, wc.dataset, wc.model),
        code=code("corpus"),
    wildcard_constraints:
        dataset=one_of(corpora(config)),
    log:
        f"{LOGS}/corpus/{{dataset}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/corpus/{{dataset}}/{{model}}.tsv"
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/corpus.py"


CORPUS_SHARD = path("corpus_shard")


rule corpus_activations:
    """Token activations of one slice of a corpus split at one hook and layer (the forward pass stops there)."""
    input:
        windows=CORPUS_WINDOWS,
        model=model_files,
    output:
        CORPUS_SHARD,
    params:
        activations=lambda wc: corpus_step.activation_params(config, wc.model, wc.hook, wc.layer, wc.split, wc.shard),
        code=code("corpus_activations"),
    wildcard_constraints:
        dataset=one_of(corpora(config)),
        split="train|held_out",
        shard=r"\d+",
    log:
        f"{LOGS}/corpus_activations/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{split}}.shard{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/corpus_activations/{{dataset}}/{{model}}/{{hook}}/layer{{layer}}/{{split}}.shard{{shard}}.tsv"
    threads: EXTRACT["threads"]
    priority: PRIORITY["extract"]
    resources:
        mem_mb=EXTRACT["mem_mb"],
        gpu=EXTRACT["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/corpus_activations.py"
