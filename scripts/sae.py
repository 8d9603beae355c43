"""Rule sae: train one SAE run on one layer; writes sae_weights.safetensors, cfg.json, features.nc, training.nc.

``sae.level: tokens`` trains on the layer's token file (every token but the excluded sink position) and
pools each prompt's token features (``sae.token_pooling``) into features.nc.
"""

from pathlib import Path

from mechflow.io import digest
from mechflow.kernels import set_backend
from mechflow.sae.pipeline import train_from_file
from mechflow.workflow import run_rule


def main(sm) -> None:
    set_backend(sm.params.kernels)
    run = dict(sm.params.run)
    level = dict(sm.params.level)
    # the checkpoint check compares the run, the input file's sha256 and this code digest
    train_from_file(sm.input[0], int(sm.wildcards.layer), run, Path(sm.output[0]).parent,
                    checkpoint_dir=sm.params.checkpoints,
                    config_digest=digest({"run": run, "level": level, "code": sm.params.code}),
                    code=sm.params.code, level=level["level"], token_pooling=level.get("token_pooling", "max"))


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
