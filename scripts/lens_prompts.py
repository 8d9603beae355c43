"""Rule lens_prompts: build results/lens/{dataset}/prompts.nc (word translations or multiple-choice questions)."""

from mechflow.io import digest, provenance_attrs, write_dataset
from mechflow.lens.prompt_sets import build_prompt_set
from mechflow.workflow import run_rule


def main(sm) -> None:
    spec = dict(sm.params.spec)
    ds = build_prompt_set(spec)
    ds.attrs.update(provenance_attrs(digest({"spec": spec, "code": sm.params.code}), dataset=sm.wildcards.dataset, params=spec))
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
