"""The working memory of each job of the steps whose memory grows with the data, estimated from the
study's facts, next to the ``mem_mb`` the job requests. Extraction holds one window of prompts, the gather
one window of rows (:data:`mechflow.contracts.GATHER_WINDOW_MB`), SAE training two shuffle windows and
encoding one batch of rows (``features.nc`` is written batch by batch), semi-NMF its layer's matrix in
float64 where that fits the job's ``mem_mb``, else one block of samples read from disk at every pass plus G
[samples, factors] (:mod:`mechflow.snmf.blocks`; the result is the same), the spatial step one block of
columns sized to its ``mem_mb`` (:func:`mechflow.spatial.analysis.columns_per_block`)."""

from __future__ import annotations

from typing import Any

from mechflow.contracts import ENCODE_BATCH, GATHER_WINDOW_MB, SNMF_BLOCK_MB
from mechflow.facts import StudyFacts
from mechflow.plan.dryrun import Job
from mechflow.plan.sizes import activation_bytes, match_result, n_features, spatial_controls, token_bytes
from mechflow.snmf.blocks import keep_in_memory, working_bytes
from mechflow.spatial.analysis import column_bytes, columns_per_block, output_bytes
from mechflow.study import sae_run_placement

__all__ = ["PYTHON_MB", "SAE_WINDOW_COPIES", "job_memory"]

#: resident memory of a step's interpreter once torch, numpy, xarray, scipy and numba are imported
#: (measured 565 MB for the spatial step's imports on Linux; rounded up)
PYTHON_MB = 600

#: the arrays SAE training streams: two shuffle windows, each read, concatenated and reordered once
SAE_WINDOW_COPIES = 2 * 3


def job_memory(job: Job, config: dict[str, Any], facts: StudyFacts) -> tuple[int | None, str, bool]:
    """Estimated peak resident bytes of one job (None where small or not estimated), a note, and whether
    the estimate is an upper bound (it counts every prompt at ``extract.max_length`` tokens)."""
    wc, rule = job.wildcards, job.rule
    d, m, hook = wc.get("dataset"), wc.get("model"), wc.get("hook")
    base = PYTHON_MB * 10**6
    if d not in facts.regions or (m is not None and m not in facts.models):
        return None, "", False
    n = facts.n(d)
    ex = config["extract"]
    if rule in ("extract", "extract_shard", "extract_tokens", "sae_splice", "sae_corpus_splice"):
        weights = facts.models[m].loaded_bytes(str(config["models"][m].get("dtype", "float32")))
        if rule in ("sae_splice", "sae_corpus_splice"):
            return base + weights, "model weights", False
        if rule == "extract_tokens":
            tokens = token_bytes(config, facts, d, m, hook) or 0
            return base + weights + tokens // max(n, 1) * min(1024, n), "model weights + one window of prompts", True
        hooks = {hit[1].get("hook") for hit in map(match_result, job.outputs) if hit}
        window = min(1024, n // (int(ex["shards"]) if rule == "extract_shard" else 1) or 1)
        buffers = sum((activation_bytes(config, facts, d, m, h) or 0) // max(n, 1) * window for h in hooks)
        return base + weights + buffers, "model weights + one window of prompts", False
    if rule == "gather_activations":
        shard = (activation_bytes(config, facts, d, m, hook) or 0) // int(ex["shards"])
        return base + min(shard, int(GATHER_WINDOW_MB * 2**20)), "one window of rows at a time", False
    if rule == "sae":
        run, width = config["sae"]["runs"][wc["run"]], facts.models[m].widths.get(hook)
        if width is None:
            return None, "", False
        F = int(run["n_features"])
        rows = n if sae_run_placement(config, wc["run"])["level"] == "pooled" else n * int(ex["max_length"])
        windows = SAE_WINDOW_COPIES * min(int(run["shuffle_window"]), rows) * width * 4
        sample = 4 * min(8192, rows) * width * 4  # the initialisation's data sample (and its float64 copies)
        weights = 4 * 4 * (2 * width * F + F + width)  # parameters, gradients, two Adam moments
        batch = 2 * ENCODE_BATCH * (width + F) * 4  # one batch of rows and its features (and their copies)
        return (base + windows + sample + weights + batch,
                "streams 2 shuffle windows; encodes and writes features.nc one batch at a time", False)
    if rule == "snmf":
        run, width = config["snmf"]["runs"][wc["run"]], facts.models[m].widths.get(hook)
        if width is None:
            return None, "", False
        k, tokens = int(run["n_factors"]), config["snmf"]["level"] == "tokens"
        samples = n * int(ex["max_length"]) if tokens else n
        mem_mb = float(job.resources.get("mem_mb", 0) or 0)
        in_memory = not config["snmf"].get("out_of_core", False) and (not mem_mb or keep_in_memory(width, samples, k, mem_mb, base))
        note = ("the layer in memory as float64 sample blocks" if in_memory else
                f"the layer read from disk in {SNMF_BLOCK_MB:g} MiB sample blocks at every pass; G in memory")
        return base + working_bytes(width, samples, k, in_memory), note, tokens
    if rule in ("spatial", "spatial_units"):
        F, R = n_features(config, facts, wc["source"], m, hook), len(facts.regions[d])
        if F is None:
            return None, "", False
        controls = spatial_controls(config, wc["source"])
        mem_mb = float(job.resources.get("mem_mb", 0) or 0)
        sp = config["spatial"]
        perms, shuffles = int(sp["permutations"]), int(sp.get("shuffles", 0)) if sp["shuffled_control"] else 0
        width = (columns_per_block(n, F, mem_mb, R, controls, in_use_bytes=base, permutations=perms, shuffles=shuffles)
                 if mem_mb else F)
        blocks = -(-F // width)
        peak = base + min(width, F) * column_bytes(n, perms, shuffles) + 2 * output_bytes(F, R, controls)
        return peak, (f"{blocks} column blocks of {width}" if blocks > 1 else "one block of columns"), False
    return None, "", False
