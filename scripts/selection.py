"""Rule select: rank one selection's candidates by generalized Jaccard similarity of their SAE features to the target's
prototype (MoNA), with cosine baselines; writes ranking.nc (with provenance) and ranking.csv (sorted by the SAE score)."""

from pathlib import Path

from mechflow.io import atomic_write_text, digest, provenance_attrs, write_dataset
from mechflow.selection.pipeline import run_selection
from mechflow.selection.ranking import ranking_table
from mechflow.workflow import run_rule


def main(sm) -> None:
    params = dict(sm.params.selection)
    attrs = provenance_attrs(digest({"selection": params, "code": sm.params.code}), selection=sm.wildcards.name,
                             params=params)
    ds = run_selection(params, Path(sm.input.weights).parent, attrs=attrs)
    write_dataset(ds, sm.output.ranking)
    atomic_write_text(sm.output.csv, ranking_table(ds).to_csv(index=False))


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
