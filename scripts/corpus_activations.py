"""Rule corpus_activations: one shard of a corpus split's token activations at one hook and layer."""

from mechflow.corpus.activations import corpus_activations_to_file
from mechflow.io import digest, open_dataset, provenance_attrs
from mechflow.models import load_model, model_digest, resolve_model
from mechflow.workflow import run_rule


def main(sm) -> None:
    p = dict(sm.params.activations)
    m = p["model"]
    resolved = resolve_model(m["spec"])
    model, _ = load_model(resolved, device=m["device"], dtype=m["dtype"], random_init=m["random_init"],
                          init_seed=m["init_seed"])
    attrs = provenance_attrs(digest({"activations": p, "code": sm.params.code}), dataset=sm.wildcards.dataset,
                             model=sm.wildcards.model, model_spec=m["spec"], model_digest=model_digest(resolved),
                             dtype=m["dtype"], random_init=m["random_init"])
    shard, n_shards = p["shard"]
    with open_dataset(sm.input.windows) as windows:
        corpus_activations_to_file(sm.output[0], model, windows, p["hook"], p["layer"], shard, n_shards, p["split"],
                                   p["batch_size"], attrs)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
