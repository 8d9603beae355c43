"""Rules spatial and spatial_units: Moran's I / Geary's C per region (+ controls: shuffled, residualised, with the sink) and LISA."""

from contextlib import ExitStack

import xarray as xr

from mechflow.contracts import upstream_attrs
from mechflow.io import FeatureColumns, digest, has_sink, provenance_attrs, write_dataset
from mechflow.spatial.analysis import spatial_analysis
from mechflow.workflow import run_rule


def main(sm) -> None:
    """One layer (rule spatial: the ``layer`` wildcard) or every layer of ``params.layers`` (rule spatial_units:
    outputs ``moran_<layer>`` / ``lisa_<layer>``), each written as soon as it is done."""
    params = dict(sm.params.spatial)
    wildcards = dict(sm.wildcards.items())
    if "layer" in wildcards:
        todo = [(int(wildcards["layer"]), sm.output.moran, sm.output.lisa)]
    else:
        todo = [(int(layer), sm.output[f"moran_{layer}"], sm.output[f"lisa_{layer}"]) for layer in sm.params.layers]
    for layer, moran_path, lisa_path in todo:
        analyse_layer(sm, params, layer, moran_path, lisa_path)


def analyse_layer(sm, params: dict, layer: int, moran_path: str, lisa_path: str) -> None:
    """Moran / Geary / LISA of one layer of the job's feature set, written to ``moran_path`` and ``lisa_path``."""
    kind = sm.wildcards.source.partition("-")[0]
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
    write_dataset(moran.assign_attrs(prov), moran_path)
    if lisa is None:  # lisa_top_n = 0: an empty file keeps the DAG simple
        lisa = xr.Dataset(coords={"region": moran["region"].values})
    write_dataset(lisa.assign_attrs(prov), lisa_path)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
