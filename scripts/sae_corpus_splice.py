"""Rule sae_corpus_splice: CE loss recovered and KL of a corpus-level SAE spliced into its model, over every token of
held-out windows of the text corpus it trained on (``sae.corpus``; at most ``sae.corpus_splice_windows``).

The reconstruction replaces every real token but position 0 of each window, exactly the rows corpus_activations
wrote for training; the held-out windows are of documents none of whose tokens the SAE saw.
"""

from pathlib import Path

import torch

from mechflow.io import digest, open_dataset, provenance_attrs, write_dataset
from mechflow.models import load_model, model_digest, resolve_model
from mechflow.sae.export import load_sae
from mechflow.splice import splice_windows
from mechflow.workflow import run_rule


def main(sm) -> None:
    p = dict(sm.params.splice)
    resolved = resolve_model(p["model"]["spec"])
    model, _ = load_model(resolved, **{k: v for k, v in p["model"].items() if k != "spec"})  # device, dtype, random init
    sae = load_sae(Path(sm.input.weights).parent, device=next(model.parameters()).device)

    def reconstruct(h: torch.Tensor) -> torch.Tensor:
        return sae(h.float())

    wc = sm.wildcards
    attrs = provenance_attrs(digest({"splice": p, "code": sm.params.code}), dataset=wc.dataset, model=wc.model,
                             model_digest=model_digest(resolved), hook=wc.hook, sae_run=wc.run, corpus=p["corpus"],
                             sae_trained_on="corpus")
    with open_dataset(sm.input.windows) as windows:
        ds = splice_windows(model, windows, int(wc.layer), reconstruct, p["batch_size"], p["max_windows"], attrs=attrs)
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
