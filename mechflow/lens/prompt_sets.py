"""Lens prompt sets as files (``lens/{dataset}/prompts.nc``) and back.

:func:`build_prompt_set` turns one prompt-set spec (:func:`mechflow.lens.jobs.prompt_set_spec`) into
an xarray Dataset on dim ``prompt``:

- ``kind = words``: ``text`` (the few-shot translation prompt), ``concept``, ``source_language``,
  ``target_language``, ``word_target``, ``word_english``, ``word_source``;
- ``kind = places`` / ``csv``: ``text`` (ending in ``Answer:``), ``stem`` (the same before ``Answer:``),
  ``question``, ``options`` ``[prompt, option]`` (padded with ''), ``n_options``, ``answer`` (index of
  the right option), ``name``, ``place_id``, ``region``.

Every file has ``split`` ``[prompt]``: ``readout`` for the prompts the read-outs (latent language,
consistency) read, first, as drawn by ``max_words`` / ``max_questions``; ``lens`` for the prompts built
from the words or questions not drawn, after them: the only prompts the tuned lens is fitted and tested
on, so no read-out is of a prompt the lens was fitted on.

:func:`translation_frame` and :func:`question_frame` read them back as DataFrames. Tokenisation is
left to the read-out (it depends on the model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from mechflow.lens.latent_language import translation_pairs, translation_prompts
from mechflow.lens.questions import LETTERS, csv_questions, mc_prompts, place_questions, split_questions
from mechflow.lens.unembed import LensError
from mechflow.lens.words import load_words

__all__ = ["SPLITS", "build_prompt_set", "split_of", "translation_frame", "question_frame"]

#: ``split`` values of a prompt file: read by the read-outs, or kept for the tuned lens's fit
SPLITS = ("readout", "lens")


def _resolve(path: str | None, base_dir: str | Path) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir) / p


def build_prompt_set(spec: dict[str, Any], base_dir: str | Path = ".") -> xr.Dataset:
    """The prompts of one lens prompt set (see the module docstring); ``attrs['kind']`` says which."""
    kind = spec.get("kind")
    if kind == "words":
        words = load_words(_resolve(spec["words"], base_dir))
        pairs = translation_pairs(list(words.columns), spec["pairs"])
        df = translation_prompts(words, pairs, shots=spec["shots"], max_words=spec["max_words"], seed=spec["seed"])
        ds = xr.Dataset({c: ("prompt", df[c].to_numpy().astype(str)) for c in df.columns},
                        coords={"prompt": np.arange(len(df), dtype=np.int64)})
        return ds.assign_attrs(kind="words", languages=",".join(words.columns), n_words=len(words))
    if kind == "places":
        from mechflow.data.prompts import geonames_places

        places = geonames_places(spec["dataset"])
        questions = place_questions(places, spec["question"], spec["options"], spec["seed"])
    elif kind == "csv":
        questions = csv_questions(_resolve(spec["path"], base_dir))
    else:
        raise LensError(f"unknown lens prompt-set kind {kind!r} (words, places, csv)")
    questions, rest = split_questions(questions, spec["max_questions"], spec["seed"])
    stems, texts = mc_prompts(questions, shots=spec["shots"], seed=spec["seed"])
    split = ["readout"] * len(questions)
    if len(rest) > spec["shots"]:  # the questions not drawn, asked among themselves: the tuned lens's fit pool
        rest_stems, rest_texts = mc_prompts(rest, shots=spec["shots"], seed=spec["seed"])
        questions = pd.concat([questions, rest], ignore_index=True)
        stems, texts, split = stems + rest_stems, texts + rest_texts, split + ["lens"] * len(rest)
    width = max(len(o) for o in questions["options"])
    options = np.array([list(o) + [""] * (width - len(o)) for o in questions["options"]], dtype=str)
    ds = xr.Dataset({
        "text": ("prompt", np.asarray(texts, dtype=str)),
        "stem": ("prompt", np.asarray(stems, dtype=str)),
        "question": ("prompt", questions["question"].to_numpy().astype(str)),
        "options": (("prompt", "option"), options),
        "n_options": ("prompt", np.array([len(o) for o in questions["options"]], dtype=np.int64)),
        "answer": ("prompt", questions["answer"].to_numpy(np.int64)),
        "name": ("prompt", questions["name"].to_numpy().astype(str)),
        "place_id": ("prompt", questions["place_id"].to_numpy(np.int64)),
        "region": ("prompt", questions["region"].to_numpy().astype(str)),
        "split": ("prompt", np.asarray(split, dtype=str)),
    }, coords={"prompt": np.arange(len(questions), dtype=np.int64), "option": list(LETTERS[:width])})
    return ds.assign_attrs(kind=kind, question=spec.get("question", "csv"))


def split_of(ds: xr.Dataset, split: str) -> xr.Dataset:
    """The prompts of one split of a prompt file: ``readout`` (what the read-outs read) or ``lens`` (the tuned
    lens's fit pool); the ``prompt`` coordinate keeps the file's prompt ids."""
    if "split" not in ds:
        raise LensError("the prompt file has no split variable (written by an older mechflow): rerun its lens_prompts job")
    if split not in SPLITS:
        raise LensError(f"unknown prompt split {split!r} ({', '.join(SPLITS)})")
    return ds.isel(prompt=np.flatnonzero(ds["split"].values.astype(str) == split))


def translation_frame(ds: xr.Dataset, split: str = "readout") -> pd.DataFrame:
    """A ``kind = words`` prompt file as a DataFrame (one row per prompt of ``split``)."""
    if ds.attrs.get("kind") != "words":
        raise LensError(f"not a word-translation prompt file (kind {ds.attrs.get('kind')!r})")
    ds = split_of(ds, split)
    return pd.DataFrame({v: ds[v].values.astype(str) for v in ds.data_vars if v != "split"})


def question_frame(ds: xr.Dataset, split: str = "readout") -> pd.DataFrame:
    """A question prompt file as a DataFrame (prompts of ``split``): ``text``, ``stem``, ``question``, ``options``
    (lists), ``answer``, ..."""
    if ds.attrs.get("kind") not in ("places", "csv"):
        raise LensError(f"not a question prompt file (kind {ds.attrs.get('kind')!r})")
    ds = split_of(ds, split)
    n = ds["n_options"].values
    return pd.DataFrame({
        "text": ds["text"].values.astype(str), "stem": ds["stem"].values.astype(str),
        "question": ds["question"].values.astype(str),
        "options": [list(row[:k]) for row, k in zip(ds["options"].values.astype(str), n)],
        "answer": ds["answer"].values.astype(np.int64), "name": ds["name"].values.astype(str),
        "place_id": ds["place_id"].values.astype(np.int64), "region": ds["region"].values.astype(str),
    })
