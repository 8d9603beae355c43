"""Rule consistency: latent answers of every layer, internal consistency and its calibration (Xie et al. 2024)."""

from mechflow.io import digest, load_dataset, provenance_attrs, write_dataset
from mechflow.lens.consistency import consistency_dataset
from mechflow.lens.model import load_causal_lm
from mechflow.lens.prompt_sets import question_frame
from mechflow.lens.questions import option_token_sets
from mechflow.lens.reader import pad_token_sets, read_layers
from mechflow.lens.sampling import path_texts, sample_paths
from mechflow.lens.tuned import TunedLens
from mechflow.workflow import run_rule


def main(sm) -> None:
    read, c = dict(sm.params.read), dict(sm.params.consistency)
    q = question_frame(load_dataset(sm.input.prompts))
    model, tok, unembed, prov = load_causal_lm(sm.params.model)
    targets = pad_token_sets(option_token_sets(tok, [len(o) for o in q["options"]]))
    tuned = TunedLens.load(sm.input.tuned[0])[0] if "tuned" in read["lenses"] else None
    kw = dict(lenses=read["lenses"], tuned=tuned, batch_size=read["batch_size"], max_length=read["max_length"],
              chunk_bytes=read["chunk_mb"] * 2**20, unembed=unembed)
    reads = read_layers(model, tok, q["text"].tolist(), targets, **kw)
    samples = None
    if c["samples"]:
        paths = sample_paths(model, tok, q["stem"].tolist(), c["samples"], max_new_tokens=c["max_new_tokens"],
                             temperature=c["temperature"], top_p=c["top_p"], seed=c["seed"], batch_size=read["batch_size"])
        samples = {"text": paths, "readouts": read_layers(model, tok, path_texts(q["stem"].tolist(), paths),
                                                          targets.repeat(c["samples"], axis=0), **kw)}
    ds = consistency_dataset(q, q["text"].tolist(), reads, layers=c["layers"], bins=c["bins"], samples=samples)
    config = {"read": read, "consistency": c, "model": sm.params.model, "code": sm.params.code}
    ds.attrs.update(provenance_attrs(digest(config), dataset=sm.wildcards.dataset, model=sm.wildcards.model, **prov,
                                     samples=c["samples"]))
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
