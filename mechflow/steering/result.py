"""The steering file (``steering/{dataset}/{model}/{name}.nc``): effects per scale and held-out prompt, generations,
the vector itself and the prompts it was made from."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from mechflow.contracts import PROMPT_COORDS
from mechflow.steering.measure import SteeringEffects

__all__ = ["steering_dataset", "summary", "VARIABLES"]

#: what each variable means (stored as its ``description`` attr)
VARIABLES: dict[str, str] = {
    "kl": "KL(unsteered || steered) of the next-token distribution at the prompt's last token, nats",
    "entropy": "entropy of the steered next-token distribution, nats",
    "target_logprob": "log-probability of each target's first token after the prompt, steered",
    "delta_target_logprob": "target_logprob minus the unsteered model's",
    "log_odds": "target_logprob of the first target minus that of the second (steered)",
    "delta_log_odds": "log_odds minus the unsteered model's log_odds",
    "top_token": "the steered model's most likely next token",
    "clean_entropy": "entropy of the unsteered next-token distribution, nats",
    "clean_target_logprob": "log-probability of each target's first token, unsteered",
    "clean_log_odds": "log_odds of the unsteered model",
    "clean_top_token": "the unsteered model's most likely next token",
    "coef": "multiplier of `vector` added at each scale (scale x unit)",
    "added_norm": "L2 norm of what is added at each steered position",
    "generation": "greedy continuation of the sample prompt at each scale (max_new_tokens tokens)",
    "vector": "the steering vector as computed (before scaling), in the units of the hook's activations",
    "train_prompt": "prompt id of each training prompt of the difference of means (-1: a CSV row)",
    "train_side": "positive or negative side of the difference of means",
    "train_text": "text of each training prompt",
}


def steering_dataset(effects: SteeringEffects, scales: Sequence[float], coefs: Sequence[float], prompts: xr.Dataset,
                     texts: Sequence[str], targets: Sequence[str], target_ids: Sequence[int], decode: Callable[[int], str],
                     generations: np.ndarray, sample_rows: Sequence[int], vector: np.ndarray,
                     train: Mapping[str, tuple[Sequence[str], np.ndarray]] | None = None,
                     attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Assemble the steering file.

    ``prompts``: the measured prompts (dim ``prompt``, the prompt set's coordinates); ``texts`` [P] the texts scored;
    ``generations`` [S, G] str of ``sample_rows`` [G] (positions in ``prompts``); ``vector`` [units]; ``train``:
    side -> (texts, prompt ids). Dims ``scale``, ``prompt``, ``target``, ``sample``, ``unit``, ``train``.
    """
    S, P = len(scales), prompts.sizes["prompt"]
    if effects.kl.shape != (S, P) or len(texts) != P:
        raise ValueError(f"effects {effects.kl.shape} do not fit {S} scales x {P} prompts")
    coords: dict[str, Any] = {name: var for name, var in prompts.coords.items() if name == "prompt" or
                              (name in PROMPT_COORDS and var.dims == ("prompt",))}
    if "text" in coords:
        coords["source_text"] = ("prompt", prompts["text"].values.astype(str))
    coords["text"] = ("prompt", np.asarray(texts, dtype=object).astype(str))
    coords["scale"] = ("scale", np.asarray(scales, dtype=np.float64))
    coords["target"] = ("target", np.asarray(targets, dtype=object).astype(str))
    coords["target_id"] = ("target", np.asarray(target_ids, dtype=np.int64))
    coords["target_token"] = ("target", np.asarray([decode(int(i)) for i in target_ids], dtype=object).astype(str))
    sample_rows = np.asarray(sample_rows, dtype=np.int64)
    coords["sample_prompt"] = ("sample", prompts["prompt"].values[sample_rows])
    coords["sample_text"] = ("sample", np.asarray([texts[i] for i in sample_rows], dtype=object).astype(str))
    tokens = np.vectorize(lambda i: decode(int(i)), otypes=[object])
    coef = np.asarray(coefs, dtype=np.float64)
    vec = np.asarray(vector, dtype=np.float64)
    data: dict[str, Any] = {
        "kl": (("scale", "prompt"), effects.kl),
        "entropy": (("scale", "prompt"), effects.entropy),
        "target_logprob": (("scale", "prompt", "target"), effects.target_logprob),
        "delta_target_logprob": (("scale", "prompt", "target"), effects.target_logprob - effects.clean_target_logprob[None]),
        "top_token": (("scale", "prompt"), tokens(effects.top_token).astype(str)),
        "clean_entropy": ("prompt", effects.clean_entropy),
        "clean_target_logprob": (("prompt", "target"), effects.clean_target_logprob),
        "clean_top_token": ("prompt", tokens(effects.clean_top_token).astype(str)),
        "coef": ("scale", coef),
        "added_norm": ("scale", np.abs(coef) * float(np.linalg.norm(vec))),
        "generation": (("scale", "sample"), np.asarray(generations, dtype=object).astype(str).reshape(S, len(sample_rows))),
        "vector": ("unit", vec.astype(np.float32)),
    }
    if len(targets) >= 2:
        odds = effects.target_logprob[..., 0] - effects.target_logprob[..., 1]
        clean = effects.clean_target_logprob[:, 0] - effects.clean_target_logprob[:, 1]
        data.update(log_odds=(("scale", "prompt"), odds), delta_log_odds=(("scale", "prompt"), odds - clean[None]),
                    clean_log_odds=("prompt", clean))
    if train:
        sides = [(side, list(t), np.asarray(ids, dtype=np.int64)) for side, (t, ids) in train.items()]
        data["train_prompt"] = ("train", np.concatenate([ids for _, _, ids in sides]))
        data["train_side"] = ("train", np.asarray([s for s, t, _ in sides for _ in t], dtype=object).astype(str))
        data["train_text"] = ("train", np.asarray([x for _, t, _ in sides for x in t], dtype=object).astype(str))
    ds = xr.Dataset(data, coords=coords, attrs=dict(attrs or {}))
    for name, text in VARIABLES.items():
        if name in ds:
            ds[name].attrs["description"] = text
    return ds


def summary(ds: xr.Dataset) -> str:
    """One line per scale: mean change of the log-odds (where there are two targets), mean KL and entropy."""
    parts = []
    for s in range(ds.sizes["scale"]):
        one = ds.isel(scale=s)
        odds = f"Δlog-odds {float(one['delta_log_odds'].mean()):+.3f}, " if "delta_log_odds" in ds else ""
        parts.append(f"scale {float(one['scale']):g}: {odds}KL {float(one['kl'].mean()):.4f}, entropy {float(one['entropy'].mean()):.3f}")
    return "; ".join(parts)
