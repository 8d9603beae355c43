"""Rule probes: ridge location probes per region and layer, random vs spatially blocked folds."""

from mechflow.contracts import upstream_attrs
from mechflow.io import digest, load_dataarray, provenance_attrs, write_dataset
from mechflow.probes import probe_dataset
from mechflow.spatial.analysis import crs_for
from mechflow.workflow import run_rule


def main(sm) -> None:
    p = dict(sm.params.probes)
    acts = load_dataarray(sm.input[0])
    if p["layers"] is not None:
        missing = sorted(set(p["layers"]) - set(acts["layer"].values.tolist()))
        if missing:
            raise ValueError(f"probes.layers {missing} were not extracted (have {acts['layer'].values.tolist()})")
        acts = acts.sel(layer=p["layers"])
    region = acts["region"].values.astype(str)
    ds = probe_dataset(acts, acts["longitude"].values, acts["latitude"].values, region, crs_for(region, sm.params.crs),
                       n_folds=p["folds"], n_blocks=p["blocks"], alphas=p["alphas"], seed=p["seed"],
                       threads=sm.threads)
    prov = provenance_attrs(digest({"probes": p, "crs": sm.params.crs, "code": sm.params.code}),
                            **upstream_attrs(acts.attrs))
    write_dataset(ds.assign_attrs({**ds.attrs, **prov}), sm.output[0])


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
