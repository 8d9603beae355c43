"""Rule steer: a steering vector added at one hook and layer, its effects per scale on held-out prompts."""

from mechflow.io import digest, write_dataset
from mechflow.steering.pipeline import run_steering
from mechflow.workflow import run_rule


def main(sm) -> None:
    params = dict(sm.params.steering)
    ds = run_steering(params, dict(sm.input.items()), sm.wildcards.name, sm.wildcards.dataset, sm.wildcards.model,
                      config_digest=digest({"steering": params, "code": sm.params.code}))
    write_dataset(ds, sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
