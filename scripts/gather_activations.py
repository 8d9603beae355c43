"""Rule gather_activations: concatenate extraction shards into one activations file."""

from mechflow.extract import gather_shards
from mechflow.io import load_dataset
from mechflow.workflow import run_rule


def main(sm) -> None:
    gather_shards(list(sm.input.shards), sm.output[0], load_dataset(sm.input.prompts), {"shards": len(sm.input.shards)})


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
