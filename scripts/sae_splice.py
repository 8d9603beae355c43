"""Rule sae_splice: loss recovered by a residual-stream SAE spliced into its model, on held-out prompts.

The reconstruction replaces every real token but the sink, the rows a token-level SAE (``sae.level: tokens``)
trains on; its held-out prompts (``split`` in features.nc) are whole prompts, none of whose tokens it saw.
"""

from pathlib import Path

import numpy as np
import torch

from mechflow.contracts import upstream_attrs
from mechflow.io import digest, load_dataarray, load_dataset, provenance_attrs, write_dataset
from mechflow.models import load_model, resolve_model
from mechflow.sae.export import load_sae
from mechflow.splice import splice_dataset
from mechflow.workflow import run_rule


def main(sm) -> None:
    p = dict(sm.params.splice)
    feats = load_dataarray(sm.input.features)
    split = feats["split"].values.astype(str) if "split" in feats.coords else np.full(feats.sizes["prompt"], "train")
    held_out = split == "validation"
    which = "validation" if held_out.any() else "train (the run has no validation split)"
    rows = np.flatnonzero(held_out) if held_out.any() else np.arange(split.size)
    if rows.size > p["max_prompts"]:  # a seeded sample keeps the job short on a CPU
        rows = np.sort(np.random.default_rng(0).choice(rows, p["max_prompts"], replace=False))
    prompts = load_dataset(sm.input.prompts).sel(prompt=feats["prompt"].values[rows])
    m = p["model"]
    model, tokenizer = load_model(resolve_model(m["spec"]), device=m["device"], dtype=m["dtype"],
                                  random_init=m["random_init"], init_seed=m["init_seed"])
    sae = load_sae(Path(sm.input.weights).parent, device=next(model.parameters()).device)

    def reconstruct(h: torch.Tensor) -> torch.Tensor:
        return sae(h.float())

    # a token-level SAE (sae.level: tokens) was trained on the very rows the splice replaces; a pooled one on
    # prompt vectors pooled by extract.pooling
    trained_on = "tokens" if feats.attrs.get("level") == "tokens" else str(feats.attrs.get("pooling", ""))
    attrs = provenance_attrs(digest({"splice": p, "code": sm.params.code}), **upstream_attrs(feats.attrs),
                             layer=int(sm.wildcards.layer), sae_run=sm.wildcards.run, split=which,
                             sae_trained_on=trained_on)
    ds = splice_dataset(model, tokenizer, prompts, int(sm.wildcards.layer), reconstruct, p["batch_size"], p["max_length"],
                        p["exclude"], attrs)
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
