"""Rule sae: train one SAE run on one layer; writes sae_weights.safetensors, cfg.json, features.nc, training.nc.

``sae.level: tokens`` trains on the layer's token file (every token but the excluded sink position) and
pools each prompt's token features (``sae.token_pooling``) into features.nc; ``sae.level: corpus`` trains
nothing: it copies the corpus SAE of the run (rule sae_corpus) and encodes and pools the prompts' tokens. At hook
``attn_z`` features.nc also holds each feature's head attribution (the model's W_O of that layer is loaded).
"""

from pathlib import Path

from mechflow.io import digest
from mechflow.kernels import set_backend
from mechflow.sae.heads import model_output_projection
from mechflow.sae.pipeline import apply_corpus_sae, train_from_file
from mechflow.workflow import run_rule


def main(sm) -> None:
    set_backend(sm.params.kernels)
    run = dict(sm.params.run)
    level = dict(sm.params.level)
    head_params = dict(sm.params.heads)  # attn_z: each feature's head attribution through the layer's W_O
    out = Path(sm.output[0]).parent
    config_digest = digest({"run": run, "level": level, "code": sm.params.code, **({"heads": head_params} if head_params else {})})
    heads = model_output_projection(head_params["model"], int(sm.wildcards.layer)) if head_params else None
    if level["level"] == "corpus":
        apply_corpus_sae(Path(sm.input.corpus_sae[0]).parent, sm.input.activations, out,
                         token_pooling=level["token_pooling"], config_digest=config_digest, heads=heads)
        return
    # the checkpoint check compares the run, the input file's sha256 and this code digest
    train_from_file(sm.input.activations, int(sm.wildcards.layer), run, out, checkpoint_dir=sm.params.checkpoints,
                    config_digest=config_digest, code=sm.params.code, level=level["level"],
                    token_pooling=level.get("token_pooling", "max"),
                    heads=heads)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
