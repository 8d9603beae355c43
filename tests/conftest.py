"""Shared fixtures: tiny models built from a config (no download), paths, workflow runner."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
WORDS = ("london oxford york leeds bath ely wells rome milan turin naples bari lecce siena pisa "
         "england scotland wales italy lazio lombardy piedmont puglia , . new jersey city town").split()


def build_tiny_tokenizer(directory: Path):
    """A word-level tokenizer over WORDS, saved so AutoTokenizer loads it from ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    tok.save_pretrained(directory)
    return tok


def build_tiny_model(directory: Path, family: str = "llama", seed: int = 0) -> Path:
    """Save a randomly initialised tiny model (llama, gpt2, bert or gpt_neox) with its tokenizer."""
    import torch
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    directory.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(directory)
    torch.manual_seed(seed)
    n_vocab = len(tok)
    if family == "llama":
        cfg = LlamaConfig(vocab_size=n_vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                          pad_token_id=0, bos_token_id=None, eos_token_id=2)
        model = LlamaForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=n_vocab, n_embd=16, n_layer=2, n_head=2, n_positions=64, pad_token_id=0)
        model = GPT2LMHeadModel(cfg)
    elif family == "bert":
        cfg = BertConfig(vocab_size=n_vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=0)
        model = BertModel(cfg)
    elif family == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=n_vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=64, pad_token_id=0)
        model = GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(family)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return {f: build_tiny_model(tmp_path_factory.mktemp(f"tiny_{f}"), f) for f in ("llama", "gpt2", "bert", "gpt_neox")}


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run this checkout's Snakefile in ``workdir`` with the test interpreter's snakemake."""
    cmd = [str(VENV_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def load_triton_interpreted() -> None:
    """Load triton and mechflow's Triton kernels so that they run in the interpreter (the caller has set
    ``TRITON_INTERPRET=1``). ``triton.jit`` reads the variable when a function is defined, triton's own
    library functions included, and torch may have imported triton already without it (``torch.optim``
    imports ``torch._dynamo``, which imports triton): then triton's Python modules are loaded afresh
    (its compiled extension ``triton._C`` is kept) and the kernel modules re-executed."""
    standard = sys.modules.get("triton.language.standard")
    if standard is not None and type(standard.cdiv).__name__ != "InterpretedFunction":
        for name in [n for n in sys.modules if (n == "triton" or n.startswith("triton.")) and not n.startswith("triton._C")]:
            del sys.modules[name]
    pytest.importorskip("triton")
    for name in ("mechflow.kernels._triton_kernels", "mechflow.kernels._autograd"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    tk = importlib.import_module("mechflow.kernels._triton_kernels")
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(tk._pack_keys, InterpretedFunction)


def load_triton_compiled() -> None:
    """The inverse of :func:`load_triton_interpreted`, for tests that compile the kernels ahead of time: where an
    earlier test module left triton and mechflow's kernels loaded as interpreted functions (``TRITON_INTERPRET=1``
    at their definition), triton's Python modules are loaded afresh without it and the kernel modules (and
    :mod:`mechflow.kernels.aot`) re-executed, so ``triton.compile`` gets JIT functions again."""
    os.environ.pop("TRITON_INTERPRET", None)
    standard = sys.modules.get("triton.language.standard")
    if standard is not None and type(standard.cdiv).__name__ == "InterpretedFunction":
        for name in [n for n in sys.modules if (n == "triton" or n.startswith("triton.")) and not n.startswith("triton._C")]:
            del sys.modules[name]
    pytest.importorskip("triton")
    for name in ("mechflow.kernels._triton_kernels", "mechflow.kernels._autograd", "mechflow.kernels.aot"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    tk = importlib.import_module("mechflow.kernels._triton_kernels")
    assert type(tk._pack_keys).__name__ == "JITFunction", type(tk._pack_keys)


@pytest.fixture(scope="module")
def triton_device():
    """Device on which the Triton kernels run: CUDA, else the CPU under the Triton interpreter
    (``TRITON_INTERPRET=1`` for the requesting test module only, set before the kernels are loaded)."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        pytest.importorskip("triton")
        yield "cuda"
        return
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        load_triton_interpreted()
        yield "cpu"


@pytest.fixture
def threads():
    """Set torch's intra-op thread count inside a test (for determinism checks); restored after it."""
    import torch

    before = torch.get_num_threads()

    def use(n: int) -> None:
        torch.set_num_threads(n)
        assert torch.get_num_threads() == n

    yield use
    torch.set_num_threads(before)


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


def have(executable: str) -> bool:
    return shutil.which(executable) is not None
