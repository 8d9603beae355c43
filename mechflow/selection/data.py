"""Candidate and target texts of a selection: a UTF-8 CSV with a text column (and optionally an id column)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mechflow.io import read_csv_checked

__all__ = ["SelectionError", "read_column", "read_texts"]


class SelectionError(ValueError):
    """A selection's inputs or settings do not fit (the message names the file or key)."""


def read_texts(path: str | Path, text: str = "text", id: str | None = None) -> pd.DataFrame:
    """The rows of a CSV as a DataFrame with columns ``id`` (str), ``text`` (str) and every other column of the file.

    ``text``: the column holding the texts (none may be empty); ``id``: a column of unique row ids
    (None: the row number, 0-based). Other columns named ``id`` or ``text`` are left out (those names are
    the output's). Every column is read as text (no type guessing), so ids such
    as ``007`` keep their form. SelectionError (one line naming the file) for a missing file, a file
    that is not UTF-8 or not a CSV, a missing column, no rows, an empty text or a repeated id.
    """
    path = Path(path)
    df = read_csv_checked(path, SelectionError, empty_hint=f"need a header with a {text!r} column", dtype=str,
                          keep_default_na=False)
    for role, col in (("text", text), ("id", id)):
        if col is not None and col not in df.columns:
            raise SelectionError(f"{path}: no {role} column {col!r} (columns: {list(df.columns)})")
    if df.empty:
        raise SelectionError(f"{path}: no rows")
    texts = df[text].astype(str)
    empty = np.flatnonzero(texts.str.strip().eq("").to_numpy())
    if empty.size:
        raise SelectionError(f"{path}: column {text!r} is empty in {empty.size} row(s) (rows {empty[:5].tolist()})")
    ids = df[id].astype(str) if id is not None else pd.Series(np.arange(len(df)).astype(str), index=df.index)
    repeated = ids[ids.duplicated()]
    if not repeated.empty:
        raise SelectionError(f"{path}: column {id!r} repeats id(s) {repeated.unique()[:5].tolist()}; ids must be unique")
    rest = df.drop(columns=[c for c in {text, id} if c is not None])
    rest = rest.drop(columns=[c for c in ("id", "text") if c in rest.columns])  # names taken by the output
    return pd.concat([pd.DataFrame({"id": ids.to_numpy(), "text": texts.to_numpy()}), rest.reset_index(drop=True)], axis=1)


def read_column(path: str | Path, column: str) -> np.ndarray:
    """One column of a CSV as strings [rows] (an evaluation label); SelectionError when the file or column is missing."""
    path = Path(path)
    df = read_csv_checked(path, SelectionError, dtype=str, keep_default_na=False)
    if column not in df.columns:
        raise SelectionError(f"{path} has no column {column!r} (columns: {list(df.columns)})")
    return df[column].astype(str).to_numpy()
