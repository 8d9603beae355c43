"""The word-translation list and the answer tokens of a word.

The shipped list (``mechflow/data/translation_words.csv``, columns ``en, fr, de, it, es``) holds
common concrete and everyday nouns written for mechflow, one concept per row, with German nouns
capitalised. It was kept to the rows whose five forms are pairwise different words and whose
*first tokens* under SmolLM2's tokenizer (the word with no leading space, as it follows ``"`` in the
prompt) are pairwise different, ignoring case (:func:`first_token_clashes`; docs/lens.md says how the
list was made). Another tokenizer splits words differently: the latent-language step re-checks every
prompt with the model's own tokenizer and leaves out those whose answer tokens overlap.

Answer tokens (:func:`answer_token_sets`):

- ``first``: the first token of the word as it follows the prompt (no leading space), one id;
- ``prefixes``: as Wendler et al. (2024): every vocabulary token that spells a prefix of the word,
  with or without a leading space (their probabilities are summed).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Literal

import pandas as pd

from mechflow.io import read_csv_checked
from mechflow.lens.errors import LensError

__all__ = ["LANGUAGE_NAMES", "SHIPPED_WORDS", "AnswerTokens", "shipped_words_path", "load_words", "first_token",
           "first_token_clashes", "answer_token_sets"]

#: how a language names itself in a prompt (Wendler et al.: ``Français: "fleur" - 中文: "``)
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "fr": "Français", "de": "Deutsch", "it": "Italiano", "es": "Español", "pt": "Português",
    "nl": "Nederlands", "ru": "Русский", "zh": "中文", "ja": "日本語", "pl": "Polski", "sv": "Svenska",
}
#: file name of the shipped word list inside the mechflow.data package
SHIPPED_WORDS = "translation_words.csv"

AnswerTokens = Literal["first", "prefixes"]


def shipped_words_path() -> Path:
    """Path of the shipped word list (``mechflow/data/translation_words.csv``)."""
    return Path(str(files("mechflow.data").joinpath(SHIPPED_WORDS)))


def load_words(path: str | Path | None = None) -> pd.DataFrame:
    """The word list: one row per concept, one column per language code (``en`` required), UTF-8 text.

    ``path=None`` reads the shipped list. LensError for a missing ``en`` column, empty cells, unknown
    language codes or repeated English words.
    """
    path = Path(path) if path is not None else shipped_words_path()
    df = read_csv_checked(path, LensError, "word list", "need an 'en' column", dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    if "en" not in df.columns:
        raise LensError(f"{path}: needs an 'en' column (English is the latent language measured); has {list(df.columns)}")
    unknown = [c for c in df.columns if c not in LANGUAGE_NAMES]
    if unknown:
        raise LensError(f"{path}: unknown language column(s) {unknown}; known: {sorted(LANGUAGE_NAMES)}")
    df = df.apply(lambda col: col.str.strip())
    empty = df.eq("").any(axis=1)
    if empty.any():
        raise LensError(f"{path}: rows {df.index[empty][:5].tolist()} have empty cells")
    if df["en"].duplicated().any():
        raise LensError(f"{path}: English words repeat: {df['en'][df['en'].duplicated()].tolist()[:5]}")
    return df.reset_index(drop=True)


def first_token(tokenizer, word: str) -> int:
    """Id of the first token of ``word`` with no leading space and no special tokens."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise LensError(f"{word!r} tokenizes to nothing")
    return int(ids[0])


def first_token_clashes(words: pd.DataFrame, tokenizer, languages: Sequence[str] | None = None) -> pd.Series:
    """Per row, the first clash among its languages ('' when none): two forms equal ignoring case, two
    first tokens that read the same ignoring case, or a first token that is an incomplete UTF-8 byte."""
    languages = list(languages or words.columns)
    out = []
    for _, row in words.iterrows():
        forms = {lang: row[lang] for lang in languages}
        heads = {lang: tokenizer.decode([first_token(tokenizer, w)]) for lang, w in forms.items()}
        clash = ""
        for a, b in itertools.combinations(languages, 2):
            if forms[a].lower() == forms[b].lower():
                clash = f"{a}/{b}: same word {forms[a]!r}"
            elif heads[a].lower() == heads[b].lower():
                clash = f"{a}/{b}: same first token {heads[a]!r}"
            elif "\ufffd" in heads[a] + heads[b]:
                clash = f"{a}/{b}: first token is a partial UTF-8 character"
            if clash:
                break
        out.append(clash)
    return pd.Series(out, index=words.index, name="clash")


class _PrefixIndex:
    """Decoded text -> token ids, for looking up the tokens that spell a word's prefixes."""

    def __init__(self, tokenizer) -> None:
        self.by_text: dict[str, list[int]] = {}
        for i in range(len(tokenizer)):
            text = tokenizer.decode([i])
            if text and "\ufffd" not in text:
                self.by_text.setdefault(text, []).append(i)

    def prefix_tokens(self, word: str) -> list[int]:
        ids: list[int] = []
        for n in range(1, len(word) + 1):
            for text in (word[:n], " " + word[:n]):
                ids += self.by_text.get(text, [])
        return sorted(set(ids))


def answer_token_sets(words: Sequence[str], tokenizer, mode: AnswerTokens = "first") -> list[list[int]]:
    """The token ids that count as answering each word (see the module docstring for ``mode``)."""
    if mode == "first":
        return [[first_token(tokenizer, w)] for w in words]
    if mode == "prefixes":
        index = _PrefixIndex(tokenizer)
        sets = [index.prefix_tokens(w) for w in words]
        return [s if s else [first_token(tokenizer, w)] for w, s in zip(words, sets)]
    raise LensError(f"unknown answer_tokens mode {mode!r} (first, prefixes)")
