# The steering step (mechflow.steering): a vector added at one hook and layer of a causal LM, and what it does to
# the next token of held-out prompts, per scale. Jobs: steering.datasets x causal LMs x steering.vectors
# (mechflow.steps.steering).

STEERING = config["steering"]
STEERING_FILE = path("steering")


rule steer:
    """Make one steering vector (difference of means, SAE decoder row or semi-NMF factor) and measure its effects."""
    input:
        unpack(lambda wc: steering_step.steering_inputs(config, ROOT, wc.dataset, wc.model, wc.name)),
    output:
        STEERING_FILE,
    params:
        steering=lambda wc: steering_step.steering_params(config, wc.dataset, wc.model, wc.name),
        code=code("steer"),
    wildcard_constraints:
        name=one_of(sorted(STEERING["vectors"]) if STEERING["enabled"] else []),
    log:
        f"{LOGS}/steer/{{dataset}}/{{model}}/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/steer/{{dataset}}/{{model}}/{{name}}.tsv"
    threads: STEERING["threads"]
    resources:
        mem_mb=STEERING["mem_mb"],
        gpu=STEERING["gpu"],
    conda:
        "../envs/mechflow.yaml"
    script:
        "../scripts/steer.py"
