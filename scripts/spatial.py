"""Rule spatial: Moran's I / Geary's C per region (+ controls: shuffled, residualised, with the sink) and LISA."""

from contextlib import ExitStack

import xarray as xr

from mechflow.contracts import upstream_attrs
from mechflow.io import FeatureColumns, digest, has_sink, provenance_attrs, write_dataset
from mechflow.spatial.analysis import spatial_analysis
from mechflow.workflow import run_rule


def main(sm) -> None:
    params = dict(sm.params.spatial)
    kind = sm.wildcards.source.partition("-")[0]
    layer = int(sm.wildcards.layer)
    with ExitStack() as files:
        # read by column blocks that fit the rule's mem_mb (results do not depend on the blocks)
        values = files.enter_context(FeatureColumns(sm.input[0], kind, layer))
        # raw units from activations that kept the pooling's left-out position: also test the pooling with it
        # (for the main pairs; a control model's or name-only set's with-sink test answers no question)
        with_sink = (files.enter_context(FeatureColumns(sm.input[0], kind, layer, sink=True))
                     if kind == "units" and sm.params.sink_control and has_sink(sm.input[0]) else None)
        moran, lisa = spatial_analysis(values, params, with_sink=with_sink, num_threads=sm.threads,
                                       memory_mb=sm.resources.mem_mb)
    prov = provenance_attrs(
        digest({"spatial": params, "code": sm.params.code}),
        **upstream_attrs(values.attrs),
        layer=layer, source=sm.wildcards.source, kind=kind, upstream_config_digest=values.attrs.get("config_digest", ""),
    )
    write_dataset(moran.assign_attrs(prov), sm.output.moran)
    if lisa is None:  # lisa_top_n = 0: an empty file keeps the DAG simple
        lisa = xr.Dataset(coords={"region": moran["region"].values})
    write_dataset(lisa.assign_attrs(prov), sm.output.lisa)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
