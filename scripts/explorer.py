"""Rule explorer: the static, offline feature explorer of one feature set (mechflow.explorer.build_explorer)."""

import logging

from mechflow.explorer.build import ExplorerSettings, Inputs, build_explorer, shipped_basemap
from mechflow.workflow import run_rule


def main(sm) -> None:
    params = dict(sm.params.explorer)
    w = sm.wildcards
    sae_dir = str(sm.input.weights[0]).rsplit("/", 1)[0] if len(sm.input.weights) else None
    info = build_explorer(
        sm.output[0], w.source, sm.input.features, int(w.layer),
        Inputs(tokens=sm.input.tokens, moran=sm.input.moran, lisa=sm.input.lisa[0] if len(sm.input.lisa) else None,
               steering=list(sm.input.steering), corpus_shards=list(sm.input.corpus_shards),
               corpus_windows=sm.input.corpus_windows[0] if len(sm.input.corpus_windows) else None),
        params["crs"], ExplorerSettings.from_params(params), sae_dir=sae_dir, model_params=params["model"],
        labels={"dataset": w.dataset, "model": w.model, "hook": w.hook}, basemap=shipped_basemap, corpus=params["corpus"])
    logging.getLogger("mechflow.explorer").info("explorer: %s", info)


run_rule(main, snakemake)  # noqa: F821 (injected by Snakemake)
