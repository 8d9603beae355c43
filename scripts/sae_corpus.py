"""Rule sae_corpus: train one SAE run on a text corpus's token-activation shards at one layer (sae.level: corpus),
evaluated on the corpus's held-out shards; writes sae_weights.safetensors, cfg.json and training.nc once for every
prompt set (each prompt set's rule sae encodes its prompts with it)."""

from pathlib import Path

from mechflow.io import digest
from mechflow.kernels import set_backend
from mechflow.sae.pipeline import train_from_shards
from mechflow.workflow import run_rule


def main(sm) -> None:
    set_backend(sm.params.kernels)
    run = dict(sm.params.run)
    out = Path(sm.output[0]).parent
    # the checkpoint check compares the run, the shards' sha256 and this code digest
    train_from_shards(sm.input.train, run, out, held_out_paths=sm.input.held_out, checkpoint_dir=sm.params.checkpoints,
                      config_digest=digest({"run": run, "code": sm.params.code}), code=sm.params.code)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
