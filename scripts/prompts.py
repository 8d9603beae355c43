"""Rule prompts: build results/prompts/{dataset}.nc."""

from mechflow.data import build_prompts
from mechflow.io import digest, provenance_attrs, write_dataset
from mechflow.workflow import run_rule


def main(sm) -> None:
    cfg = dict(sm.params.dataset)
    ds = build_prompts(cfg)
    ds.attrs.update(provenance_attrs(digest(cfg), dataset=sm.wildcards.dataset, source=cfg["source"], params=cfg))
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
