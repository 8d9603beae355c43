"""Rule corpus: results/corpus/{dataset}/{model}/windows.nc, a text corpus cut into token windows."""

from mechflow.corpus import build_windows, read_documents
from mechflow.io import digest, provenance_attrs, write_dataset
from mechflow.models import load_tokenizer, resolve_model
from mechflow.workflow import run_rule


def main(sm) -> None:
    p = dict(sm.params.corpus)
    tokenizer = load_tokenizer(resolve_model(p["model"]["spec"]))
    ds = build_windows(read_documents(p["corpus"]), tokenizer, p["context_size"], p["held_out"], p["seed"],
                       p["max_tokens"])
    ds.attrs.update(provenance_attrs(digest({"corpus": p, "code": sm.params.code}), dataset=sm.wildcards.dataset,
                                     model=sm.wildcards.model, source="text", corpus_path=p["corpus"]["path"]))
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
