"""Internal consistency (Xie et al. 2024, "Calibrating Reasoning in Language Models with Internal Consistency").

Each layer's *latent prediction* is the option whose answer token the lens rates highest at the
answer position (options renormalised among themselves: ``softmax`` of their log-probabilities);
the *final prediction* is the model's own (the last layer through the plain unembedding). The
internal consistency of a prompt is the fraction of the layers used whose latent prediction agrees
with the final one:

    IC = (1 / |S|) sum_{l in S} 1[latent_l = final],   S = every layer by default (the paper's score
    sums the agreement over all layers it decodes, the last one included).

The authors' code (github.com/zhxieml/internal-consistency, ``cal_agreement_accs``) also corrects each
layer's bias toward some options before taking the agreement: an option counts as layer ``l``'s
prediction where its normalised probability exceeds that layer's ``(K-1)/K`` quantile over the
prompt set. That variant is ``consistency_quantile`` (sets whose questions all have K options).

Calibration (:func:`calibration_curve`): accuracy against a confidence score in equal-width bins, and
the expected calibration error ``ECE = sum_b n_b / N |acc_b - conf_b|``; for IC, and for the
final-layer probability of the chosen option (the usual confidence). Voting
(:func:`weighted_vote`): over several sampled reasoning paths, plain majority voting against votes
weighted by each path's IC (the paper's SC+IC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.lens.questions import LETTERS
from mechflow.lens.reader import LayerReadout
from mechflow.lens.unembed import LensError

__all__ = ["option_probabilities", "latent_predictions", "internal_consistency", "quantile_consistency",
           "calibration_curve", "auroc", "weighted_vote", "consistency_dataset"]


def option_probabilities(option_logprob: np.ndarray) -> np.ndarray:
    """Options renormalised among themselves: ``[..., O]`` log-probabilities (``-inf`` for a padded option)
    -> probabilities summing to 1 over the options (0 for padded ones)."""
    lp = np.asarray(option_logprob, dtype=np.float64)
    m = np.max(lp, axis=-1, keepdims=True)
    e = np.exp(lp - np.where(np.isfinite(m), m, 0.0))
    return e / e.sum(-1, keepdims=True)


def latent_predictions(option_prob: np.ndarray) -> np.ndarray:
    """The option each row rates highest ``[...]`` (int64; the first on ties)."""
    return np.argmax(option_prob, axis=-1)


def internal_consistency(latent: np.ndarray, final: np.ndarray, layers: Sequence[int] | None = None) -> np.ndarray:
    """IC ``[P]`` in [0, 1]: the fraction of ``layers`` (default: all) whose latent prediction ``latent`` ``[P, L]``
    equals the final prediction ``final`` ``[P]``."""
    latent = np.asarray(latent)
    cols = np.arange(latent.shape[1]) if layers is None else np.asarray(layers, dtype=np.int64)
    if cols.size == 0 or cols.min() < 0 or cols.max() >= latent.shape[1]:
        raise LensError(f"consistency layers {cols.tolist()} are outside 0..{latent.shape[1] - 1}")
    return (latent[:, cols] == np.asarray(final)[:, None]).mean(1)


def quantile_consistency(option_prob: np.ndarray, layers: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The authors' label-bias-corrected IC and final prediction ``([P], [P])`` from ``[P, L, K]`` option
    probabilities (every prompt with K options).

    Score of option k at layer l: 1 above the ``(K-1)/K`` quantile of ``p[:, l, k]`` over prompts, 1/K at
    it, else 0; the final prediction is the last layer's best-scoring option; IC is the mean score of
    that option over ``layers``.
    """
    p = np.asarray(option_prob, dtype=np.float64)
    K = p.shape[-1]
    q = np.quantile(p, (K - 1) / K, axis=0, keepdims=True)  # [1, L, K]
    score = (p > q) + (p == q) / K
    final = np.argmax(score[:, -1], axis=-1)
    cols = np.arange(p.shape[1]) if layers is None else np.asarray(layers, dtype=np.int64)
    per_layer = np.take_along_axis(score, final[:, None, None].repeat(p.shape[1], 1), axis=-1)[..., 0]
    return per_layer[:, cols].mean(1), final


def calibration_curve(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, np.ndarray | float]:
    """Reliability of a confidence score in [0, 1]: equal-width bins of ``confidence`` ``[N]``.

    Returns ``edges`` ``[bins+1]``, per bin ``confidence`` (mean), ``accuracy`` (mean of ``correct``; NaN in an
    empty bin) and ``count``, and ``ece`` (the count-weighted mean absolute gap).
    """
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    ok = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        acc = np.bincount(which, ok, bins) / count
    gap = np.where(count > 0, np.abs(acc - mean_conf), 0.0)
    ece = float((count * gap).sum() / max(1, count.sum()))
    return {"edges": edges, "confidence": mean_conf, "accuracy": acc, "count": count, "ece": ece}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for telling ``positive`` rows apart (Mann-Whitney, ties halved);
    NaN when one class is empty."""
    from scipy.stats import rankdata

    s, y = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def weighted_vote(answers: np.ndarray, weights: np.ndarray | None = None, n_options: int | None = None) -> np.ndarray:
    """The option with the largest total weight per prompt ``[P]`` from sampled answers ``[P, S]`` (weights
    ``[P, S]``, default 1: majority voting). Ties go to the tied option voted for by the earliest sample."""
    answers = np.asarray(answers, dtype=np.int64)
    w = np.ones(answers.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    O = int(n_options or answers.max() + 1)
    totals = np.zeros((answers.shape[0], O))
    np.add.at(totals, (np.arange(answers.shape[0])[:, None].repeat(answers.shape[1], 1), answers), w)
    best = totals.max(1, keepdims=True)
    tied = np.isclose(totals, best, rtol=1e-12, atol=1e-12)
    first = np.argmax(np.take_along_axis(tied, answers, axis=1), axis=1)
    return answers[np.arange(answers.shape[0]), first]


def consistency_dataset(
    questions: pd.DataFrame,
    texts: Sequence[str],
    readouts: Mapping[str, LayerReadout],
    *,
    layers: Sequence[int] | None = None,
    bins: int = 10,
    samples: Mapping[str, object] | None = None,
) -> xr.Dataset:
    """The ``consistency.nc`` contract from the questions, their prompt texts and each lens's read-out of the
    option tokens (targets = options).

    Per prompt and layer: ``option_logprob``, ``option_rank``, ``option_prob`` ``[prompt, layer, option, lens]``,
    ``entropy`` and ``latent`` ``[prompt, layer, lens]``; per prompt: ``answer``, ``final``, ``correct``,
    ``final_prob``, ``consistency`` and ``consistency_quantile`` ``[prompt, lens]``; per score (``consistency_<lens>``,
    ``final_prob``): the calibration curve ``bin_confidence``, ``bin_accuracy``, ``bin_count`` ``[score, bin]``,
    ``ece`` and ``auroc`` ``[score]``. With ``samples`` (keys ``text`` [P][S] rationales, ``readouts`` lens ->
    LayerReadout of the P*S sampled prompts in prompt-major order): ``sample_answer``, ``sample_correct``
    ``[prompt, sample]``, ``sample_consistency`` ``[prompt, sample, lens]``, ``vote_majority`` ``[prompt]``,
    ``vote_weighted`` ``[prompt, lens]`` and the accuracies ``accuracy_majority``, ``accuracy_weighted`` ``[lens]``.
    """
    lenses = list(readouts)
    if not lenses:
        raise LensError("no lens read-outs to assemble")
    P, L, O = readouts[lenses[0]].target_logprob.shape
    n_opt = np.array([len(o) for o in questions["options"]], dtype=np.int64)
    if len(questions) != P or len(texts) != P or n_opt.max() != O:
        raise LensError(f"read-outs [{P}, {L}, {O}] do not fit {len(questions)} questions with up to {n_opt.max()} options")
    answer = questions["answer"].to_numpy(np.int64)
    lp = np.stack([readouts[k].target_logprob for k in lenses], -1)  # [P, L, O, lens]
    prob = option_probabilities(np.moveaxis(lp, -1, 0))  # [lens, P, L, O]
    latent = latent_predictions(prob)  # [lens, P, L]
    base = lenses.index("logit") if "logit" in lenses else 0
    final = latent[base, :, -1]  # the model's own answer: the last layer through the plain unembedding
    correct = final == answer
    final_prob = prob[base, np.arange(P), -1, final]
    ic = np.stack([internal_consistency(latent[i], final, layers) for i in range(len(lenses))], -1)  # [P, lens]
    if (n_opt == O).all():
        icq = np.stack([quantile_consistency(prob[i], layers)[0] for i in range(len(lenses))], -1)
    else:
        icq = np.full((P, len(lenses)), np.nan)
    scores = {f"consistency_{k}": ic[:, i] for i, k in enumerate(lenses)} | {"final_prob": final_prob}
    curves = {name: calibration_curve(s, correct, bins) for name, s in scores.items()}
    options = np.array([list(o) + [""] * (O - len(o)) for o in questions["options"]], dtype=str)
    data: dict[str, tuple] = {
        "option_logprob": (("prompt", "layer", "option", "lens"), lp.astype(np.float32)),
        "option_rank": (("prompt", "layer", "option", "lens"), np.stack([readouts[k].target_rank for k in lenses], -1).astype(np.int32)),
        "option_prob": (("prompt", "layer", "option", "lens"), np.moveaxis(prob, 0, -1).astype(np.float32)),
        "entropy": (("prompt", "layer", "lens"), np.stack([readouts[k].entropy for k in lenses], -1).astype(np.float32)),
        "latent": (("prompt", "layer", "lens"), np.moveaxis(latent, 0, -1).astype(np.int32)),
        "answer": ("prompt", answer.astype(np.int32)),
        "final": ("prompt", final.astype(np.int32)),
        "correct": ("prompt", correct),
        "final_prob": ("prompt", final_prob.astype(np.float32)),
        "consistency": (("prompt", "lens"), ic.astype(np.float32)),
        "consistency_quantile": (("prompt", "lens"), icq.astype(np.float32)),
        "bin_confidence": (("score", "bin"), np.stack([c["confidence"] for c in curves.values()]).astype(np.float32)),
        "bin_accuracy": (("score", "bin"), np.stack([c["accuracy"] for c in curves.values()]).astype(np.float32)),
        "bin_count": (("score", "bin"), np.stack([c["count"] for c in curves.values()]).astype(np.int64)),
        "ece": ("score", np.array([c["ece"] for c in curves.values()], dtype=np.float32)),
        "auroc": ("score", np.array([auroc(s, correct) for s in scores.values()], dtype=np.float32)),
    }
    coords = {
        "prompt": np.arange(P, dtype=np.int64), "layer": np.arange(L, dtype=np.int64), "option": list(LETTERS[:O]),
        "lens": lenses, "score": list(scores), "bin": np.arange(bins, dtype=np.int64),
        "bin_edges": ("bin_edge", curves["final_prob"]["edges"]),
        "text": ("prompt", np.asarray(texts, dtype=str)), "question": ("prompt", questions["question"].to_numpy().astype(str)),
        "options": (("prompt", "option"), options), "n_options": ("prompt", n_opt),
        "name": ("prompt", questions.get("name", pd.Series([""] * P)).to_numpy().astype(str)),
        "place_id": ("prompt", questions.get("place_id", pd.Series([-1] * P)).to_numpy().astype(np.int64)),
        "region": ("prompt", questions.get("region", pd.Series([""] * P)).to_numpy().astype(str)),
    }
    if samples is not None:
        data.update(_sampled(samples, lenses, P, answer, layers))
        coords["sample"] = np.arange(data["sample_answer"][1].shape[1], dtype=np.int64)
    ds = xr.Dataset(data, coords=coords)
    ds["consistency"].attrs["description"] = ("fraction of the layers used whose latent prediction (the option the lens rates "
                                              "highest) equals the model's final answer (Xie et al. 2024)")
    ds["consistency_quantile"].attrs["description"] = ("the same agreement after the authors' per-layer label-bias correction "
                                                       "((K-1)/K quantile threshold per layer and option over prompts)")
    ds["final_prob"].attrs["description"] = "final-layer probability of the chosen option, renormalised over the options"
    ds["ece"].attrs["description"] = "expected calibration error of the score against correctness (equal-width bins)"
    ds.attrs.update(accuracy=float(correct.mean()), layers_used="all" if layers is None else ",".join(map(str, layers)),
                    method="Xie et al. 2024 internal consistency: logit/tuned-lens latent predictions at the answer token")
    return ds


def _sampled(samples: Mapping[str, object], lenses: Sequence[str], P: int, answer: np.ndarray,
             layers: Sequence[int] | None) -> dict[str, tuple]:
    """Variables of the sampled reasoning paths (see :func:`consistency_dataset`)."""
    text = np.asarray(samples["text"], dtype=str)
    S = text.shape[1]
    reads: Mapping[str, LayerReadout] = samples["readouts"]  # type: ignore[assignment]
    lp = np.stack([reads[k].target_logprob for k in lenses], 0)  # [lens, P*S, L, O]
    prob = option_probabilities(lp)
    latent = latent_predictions(prob)  # [lens, P*S, L]
    base = lenses.index("logit") if "logit" in lenses else 0
    final = latent[base, :, -1]
    ic = np.stack([internal_consistency(latent[i], final, layers) for i in range(len(lenses))], -1)  # [P*S, lens]
    ans = final.reshape(P, S)
    ic = ic.reshape(P, S, len(lenses))
    O = prob.shape[-1]
    majority = weighted_vote(ans, None, O)
    weighted = np.stack([weighted_vote(ans, ic[..., i], O) for i in range(len(lenses))], -1)  # [P, lens]
    return {
        "sample_text": (("prompt", "sample"), text),
        "sample_answer": (("prompt", "sample"), ans.astype(np.int32)),
        "sample_correct": (("prompt", "sample"), ans == answer[:, None]),
        "sample_consistency": (("prompt", "sample", "lens"), ic.astype(np.float32)),
        "vote_majority": ("prompt", majority.astype(np.int32)),
        "vote_weighted": (("prompt", "lens"), weighted.astype(np.int32)),
        "accuracy_majority": ((), np.float32((majority == answer).mean())),
        "accuracy_weighted": (("lens",), (weighted == answer[:, None]).mean(0).astype(np.float32)),
        "accuracy_sampled": ((), np.float32((ans == answer[:, None]).mean())),
    }
