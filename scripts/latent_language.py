"""Rule latent_language: per layer, the probability of the answer in the target language, English and the source."""

import numpy as np

from mechflow.io import digest, load_dataset, provenance_attrs, write_dataset
from mechflow.lens.latent_language import latent_language_dataset, overlapping_sets
from mechflow.lens.model import load_causal_lm
from mechflow.lens.prompt_sets import translation_frame
from mechflow.lens.reader import pad_token_sets, read_layers
from mechflow.lens.tuned import TunedLens
from mechflow.lens.words import answer_token_sets
from mechflow.workflow import run_rule


def main(sm) -> None:
    read, mode = dict(sm.params.read), sm.params.answer_tokens
    prompts = translation_frame(load_dataset(sm.input.prompts))
    model, tok, unembed, prov = load_causal_lm(sm.params.model)
    words = sorted(set(prompts[["word_target", "word_english", "word_source"]].to_numpy().ravel()))
    ids = dict(zip(words, answer_token_sets(words, tok, mode)))
    sets = [[ids[r.word_target], ids[r.word_english], ids[r.word_source]] for r in prompts.itertuples()]
    keep = np.flatnonzero(~overlapping_sets(sets))  # a prompt whose roles share a token cannot tell them apart
    dropped = len(sets) - len(keep)
    prompts, sets = prompts.iloc[keep].reset_index(drop=True), [sets[i] for i in keep]
    tuned = TunedLens.load(sm.input.tuned[0])[0] if "tuned" in read["lenses"] else None
    reads = read_layers(model, tok, prompts["text"].tolist(), pad_token_sets(sets), lenses=read["lenses"], tuned=tuned,
                        batch_size=read["batch_size"], max_length=read["max_length"], chunk_bytes=read["chunk_mb"] * 2**20,
                        unembed=unembed)
    ds = latent_language_dataset(prompts, sets, reads, decode=lambda i: tok.decode([i]))
    config = {"read": read, "answer_tokens": mode, "model": sm.params.model, "code": sm.params.code}
    ds.attrs.update(provenance_attrs(digest(config), dataset=sm.wildcards.dataset, model=sm.wildcards.model, **prov,
                                     answer_token_mode=mode, dropped_overlapping=dropped))
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
