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
