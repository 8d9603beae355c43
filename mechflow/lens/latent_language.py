"""Latent language: which language's word the intermediate layers predict while the model translates.

After Wendler et al. (2024), "Do Llamas Work in English?", and Zhong et al. (2024), "Beyond
English-Centric LLMs": the model completes a few-shot word translation from a source to a target
language (neither English),

    Français: "chien" - Italiano: "cane"
    ...
    Français: "fleur" - Italiano: "

and every layer is read at the last position. Per layer: the probability of the answer in the target
language (``fiore``), of the same concept in English (``flower``) and in the source language
(``fleur``), each the summed probability of its answer tokens (:mod:`mechflow.lens.words`). A
middle-layer bump of the English curve before the target curve rises is the "latent English" of the
paper; ``language`` in the output names these three roles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.lens.errors import LensError
from mechflow.lens.words import LANGUAGE_NAMES

if TYPE_CHECKING:  # the read-outs come from mechflow.lens.reader (torch); the study's checks use this module without it
    from mechflow.lens.reader import LayerReadout

__all__ = ["ROLES", "translation_pairs", "prompt_line", "translation_prompts", "overlapping_sets", "latent_language_dataset"]

#: the ``language`` coordinate: the answer in the target language, in English, in the source language
ROLES: tuple[str, ...] = ("target", "english", "source")


def translation_pairs(languages: Sequence[str], pairs: Sequence[Sequence[str]] | None = None) -> list[tuple[str, str]]:
    """(source, target) pairs: the given ones (checked), else every ordered pair of the non-English ``languages``."""
    if pairs is None:
        others = [lang for lang in languages if lang != "en"]
        return [(a, b) for a in others for b in others if a != b]
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise LensError(f"a language pair is [source, target], got {list(pair)}")
        a, b = str(pair[0]), str(pair[1])
        if a == b or "en" in (a, b):
            raise LensError(f"pair {[a, b]}: source and target must differ and neither be English "
                            "(English is the latent language measured)")
        missing = [lang for lang in (a, b) if lang not in languages]
        if missing:
            raise LensError(f"pair {[a, b]}: the word list has no column {missing} (has {list(languages)})")
        out.append((a, b))
    return out


def prompt_line(source: str, target: str, source_word: str, target_word: str | None = None) -> str:
    """``Français: "fleur" - Italiano: "fiore"`` (a demonstration), or the open query ending in ``"``."""
    head = f'{LANGUAGE_NAMES[source]}: "{source_word}" - {LANGUAGE_NAMES[target]}: "'
    return head if target_word is None else f'{head}{target_word}"'


def translation_prompts(words: pd.DataFrame, pairs: Sequence[tuple[str, str]], shots: int = 4,
                        max_words: int | None = None, seed: int = 0) -> pd.DataFrame:
    """One prompt per (pair, concept): ``shots`` demonstrations of other concepts, then the query.

    Concepts: the whole list, or ``max_words`` of them drawn once (seeded) and used for every pair.
    Demonstrations are drawn per prompt (seeded). Columns: ``text``, ``concept`` (the English word),
    ``source_language``, ``target_language``, ``word_target``, ``word_english``, ``word_source``, ``split``:
    ``readout`` for the drawn concepts' prompts (first, in pair then concept order), ``lens`` for the concepts
    left over, built after them in the same way (the tuned lens's fit pool: prompts no read-out reads).
    """
    n = len(words)
    if shots >= n:
        raise LensError(f"{shots} demonstrations need more than {shots} words (the list has {n})")
    rng = np.random.default_rng(seed)
    concepts = np.arange(n) if max_words is None or max_words >= n else np.sort(rng.choice(n, int(max_words), replace=False))
    rest = np.setdiff1d(np.arange(n), concepts)
    rows = []
    for split, chosen in (("readout", concepts), ("lens", rest)):
        for source, target in pairs:
            for c in chosen:
                others = rng.choice(np.delete(np.arange(n), c), shots, replace=False) if shots else []
                lines = [prompt_line(source, target, words.at[o, source], words.at[o, target]) for o in others]
                lines.append(prompt_line(source, target, words.at[c, source]))
                rows.append({"text": "\n".join(lines), "concept": words.at[c, "en"], "source_language": source,
                             "target_language": target, "word_target": words.at[c, target],
                             "word_english": words.at[c, "en"], "word_source": words.at[c, source], "split": split})
    return pd.DataFrame(rows)


def overlapping_sets(token_sets: Sequence[Sequence[Sequence[int]]]) -> np.ndarray:
    """Per prompt, whether any two of its role token sets ``[P][role][k]`` share a token (bool ``[P]``)."""
    out = np.zeros(len(token_sets), dtype=bool)
    for p, sets in enumerate(token_sets):
        seen: set[int] = set()
        for s in sets:
            if seen & set(s):
                out[p] = True
                break
            seen |= set(s)
    return out


def latent_language_dataset(
    prompts: pd.DataFrame,
    token_sets: Sequence[Sequence[Sequence[int]]],
    readouts: Mapping[str, LayerReadout],
    decode=None,
) -> xr.Dataset:
    """The ``latent_language.nc`` contract from the prompts, their role token sets ``[P][3][k]`` and each lens's read-out.

    Variables: ``logprob`` and ``rank`` ``[prompt, layer, language, lens]`` (log of the summed
    probability of the answer tokens; rank of the best of them, 0 = top-1); ``entropy``, ``top1``
    (token id) and, with ``decode`` (id -> text), ``top1_text`` ``[prompt, layer, lens]``; ``correct``
    ``[prompt]``: the model's own top-1 next token (the logit lens at the last layer, which is the
    model's output) is one of the target-language answer tokens.
    """
    lenses = list(readouts)
    if not lenses:
        raise LensError("no lens read-outs to assemble")
    first = readouts[lenses[0]]
    P, L, T = first.target_logprob.shape
    if T != len(ROLES) or len(prompts) != P or len(token_sets) != P:
        raise LensError(f"read-outs [{P}, {L}, {T}] do not fit {len(prompts)} prompts x {len(ROLES)} roles")
    stack = lambda name: np.stack([getattr(readouts[k], name) for k in lenses], axis=-1)  # noqa: E731
    final_top1 = (readouts["logit"] if "logit" in readouts else first).top1[:, -1]
    correct = np.array([int(t) in set(sets[0]) for t, sets in zip(final_top1, token_sets)], dtype=bool)
    words = np.stack([prompts["word_target"], prompts["word_english"], prompts["word_source"]], axis=1).astype(str)
    answer = np.array([[" ".join(map(str, s)) for s in sets] for sets in token_sets], dtype=str).reshape(P, len(ROLES))
    data = {
        "logprob": (("prompt", "layer", "language", "lens"), stack("target_logprob").astype(np.float32)),
        "rank": (("prompt", "layer", "language", "lens"), stack("target_rank").astype(np.int32)),
        "entropy": (("prompt", "layer", "lens"), stack("entropy").astype(np.float32)),
        "top1": (("prompt", "layer", "lens"), stack("top1").astype(np.int32)),
        "correct": ("prompt", correct),
    }
    if decode is not None:
        cache: dict[int, str] = {}
        ids = stack("top1")
        data["top1_text"] = (("prompt", "layer", "lens"),
                             np.vectorize(lambda i: cache.setdefault(int(i), decode(int(i))), otypes=[object])(ids).astype(str))
    ds = xr.Dataset(data, coords={
        "prompt": np.arange(P, dtype=np.int64), "layer": np.arange(L, dtype=np.int64), "language": list(ROLES), "lens": lenses,
        "text": ("prompt", prompts["text"].to_numpy().astype(str)),
        "concept": ("prompt", prompts["concept"].to_numpy().astype(str)),
        "source_language": ("prompt", prompts["source_language"].to_numpy().astype(str)),
        "target_language": ("prompt", prompts["target_language"].to_numpy().astype(str)),
        "word": (("prompt", "language"), words),
        "answer_tokens": (("prompt", "language"), answer),
    })
    ds["logprob"].attrs.update(units="nats", description="log of the summed next-token probability of the role's answer tokens")
    ds["rank"].attrs["description"] = "tokens with a larger logit than the best answer token (0 = top-1)"
    ds["entropy"].attrs.update(units="nats", description="entropy of the lens's next-token distribution")
    ds["correct"].attrs["description"] = "the model's top-1 next token is a target-language answer token"
    ds.attrs.update(accuracy=float(correct.mean()) if P else float("nan"), roles=",".join(ROLES),
                    method="Wendler et al. 2024 few-shot word translation, read at the last prompt token")
    return ds
