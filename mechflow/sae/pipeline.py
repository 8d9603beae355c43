"""Entry point of the ``sae`` Snakemake rule: activations file (pooled or token-level), or corpus token shards
(:func:`train_from_shards`), -> SAE directory of the data contract."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechflow.contracts import ENCODE_BATCH, PROMPT_COORDS, SAE_CORPUS_FILES, upstream_attrs
from mechflow.io import (
    RowWriter,
    atomic_write_bytes,
    digest,
    file_sha256,
    open_dataarray,
    open_dataset,
    provenance_attrs,
    write_dataset,
)
from mechflow.kernels.threads import torch_threads
from mechflow.sae.archs import SparseAutoencoder
from mechflow.sae.config import validate_run
from mechflow.sae.data import DataArraySource, RowSource, ShardedSource, layer_rows
from mechflow.sae.export import lens_metadata, load_sae, sae_cfg, save_sae
from mechflow.sae.heads import HEAD_VARIABLES, head_attribution
from mechflow.sae.metrics import DENSITY_EDGES, density_histogram, evaluate_batches
from mechflow.sae.tokens import (
    LEVELS,
    TOKEN_POOLING,
    TokenPooler,
    TokenPooling,
    select_token_layer,
    token_rows,
)
from mechflow.sae.train import EVAL_BATCH, Trainer

log = logging.getLogger(__name__)

#: an ``attn_z`` SAE layer's output projection W_O [d_model, n_heads * d_head] (array or tensor) and head count
OutputProjection = tuple[Any, int]


def select_layer(da: xr.DataArray, layer: int) -> xr.DataArray:
    """``activations`` [prompt, layer, unit] -> the lazy [prompt, unit] slice of ``layer``."""
    if set(da.dims) != {"prompt", "layer", "unit"}:
        raise ValueError(f"activations must have dims (prompt, layer, unit), got {da.dims}")
    return layer_rows(da, layer, "prompt", "activations file")


def features_coords(n_features: int, layer_da: xr.DataArray | xr.Dataset, val_rows: np.ndarray | None = None) -> xr.Dataset:
    """The coordinates of ``features.nc``: ``prompt`` and ``feature``, the prompt coordinates of
    ``layer_da`` (anything with a ``prompt`` dim) carried over, and ``split`` [prompt] (``train`` /
    ``validation``: the prompts held out of training, ``val_rows``, as positions along ``prompt``)."""
    coords: dict[str, Any] = {"prompt": layer_da["prompt"].values, "feature": np.arange(n_features, dtype=np.int64)}
    for name in PROMPT_COORDS:
        if name in layer_da.coords and layer_da[name].dims == ("prompt",):
            coords[name] = ("prompt", layer_da[name].values)
    split = np.full(layer_da.sizes["prompt"], "train", dtype="<U10")
    if val_rows is not None:
        split[np.asarray(val_rows, dtype=np.int64)] = "validation"
    coords["split"] = ("prompt", split)
    return xr.Dataset(coords=coords)


def prompt_batches(prompt_of: np.ndarray, batch: int) -> list[tuple[int, int]]:
    """Row ranges [(start, stop)] of about ``batch`` rows that never split a prompt, for rows grouped
    by prompt (``prompt_of`` [n_rows] non-decreasing, as extraction writes tokens); a prompt longer
    than ``batch`` is one range. ValueError when the rows are not grouped."""
    prompt_of = np.asarray(prompt_of, dtype=np.int64)
    if prompt_of.size and (np.diff(prompt_of) < 0).any():
        raise ValueError("token rows are not grouped by prompt (prompt_index decreases); re-extract the token file")
    n = prompt_of.size
    ends = np.r_[np.flatnonzero(prompt_of[1:] != prompt_of[:-1]) + 1, n] if n else np.zeros(0, np.int64)
    bounds, start = [], 0
    while start < n:
        k = int(np.searchsorted(ends, start + batch, side="right")) - 1  # the last prompt end within the batch
        cut = int(ends[k]) if k >= 0 and ends[k] > start else int(ends[np.searchsorted(ends, start, side="right")])
        bounds.append((start, cut))
        start = cut
    return bounds


@torch.no_grad()
def write_features(model: SparseAutoencoder, source: RowSource, coords: xr.Dataset, attrs: dict[str, Any],
                   path: str | Path, prompt_of: np.ndarray | None = None, token_pooling: TokenPooling = "max",
                   batch: int = ENCODE_BATCH, heads: OutputProjection | None = None) -> Path:
    """Encode every row of ``source`` and stream ``features`` [prompt, feature] float32 into ``path``
    batch by batch (atomically, :class:`mechflow.io.RowWriter`): memory holds one batch of rows and of
    their features, never the whole [prompt, feature] matrix.

    ``prompt_of`` None: one row per prompt (pooled level). Otherwise [n_rows] the prompt position of
    each token row, grouped by prompt: each prompt's row is the ``token_pooling`` (max or mean) over
    its rows' features, in batches that never split a prompt (:func:`prompt_batches`).
    ``heads``: (W_O [d_model, n_heads * d_head], n_heads) of an ``attn_z`` SAE's layer
    (:func:`mechflow.hooks.output_projection`): each feature's head attribution (:mod:`mechflow.sae.heads`:
    ``head_share``, ``head_direct`` [feature, head]) is written as coordinates of the file.
    """
    if heads is not None:
        w_o, n_heads = heads
        attribution = head_attribution(model.W_dec.detach().float().cpu().numpy(), np.asarray(w_o), int(n_heads))
        coords = coords.assign_coords({name: attribution[name] for name in HEAD_VARIABLES})
    device = next(model.parameters()).device
    n = source.n_rows
    with RowWriter(path, coords, ("prompt", "feature"), {"features": attrs}, attrs) as writer:
        if prompt_of is None:
            for i in range(0, n, batch):
                x = torch.from_numpy(source.read(i, min(i + batch, n))).to(device)
                writer.write(i, features=model.encode(x).float().cpu().numpy())
        else:
            for i, j in prompt_batches(prompt_of, batch):
                first, last = int(prompt_of[i]), int(prompt_of[j - 1])
                pooler = TokenPooler(last - first + 1, model.n_features, token_pooling, device)
                x = torch.from_numpy(source.read(i, j)).to(device)
                pooler.add(model.encode(x).float(), torch.from_numpy(prompt_of[i:j] - first).to(device))
                writer.write(first, features=pooler.result())
    return Path(path)


def _fit(source: RowSource, run: dict[str, Any], **trainer_kw: Any) -> tuple[Trainer, SparseAutoencoder]:
    """Train ``run`` on ``source`` (:class:`~mechflow.sae.train.Trainer` keywords ``trainer_kw``), warning when
    the dictionary is larger than its training rows; (trainer, trained model)."""
    trainer = Trainer(source, run, **trainer_kw)
    run = trainer.run  # validated, defaults filled
    n_train = source.n_rows - (0 if trainer.val_rows is None else len(trainer.val_rows))
    if run["n_features"] > n_train:
        log.warning("SAE %s: %d features from %d training vectors: a dictionary larger than its data can memorise "
                    "it (compare train and validation FVU in training.nc; hold out rows with val_fraction, train "
                    "on tokens, or use fewer features)", run["arch"], run["n_features"], n_train)
    return trainer, trainer.fit()


def _save_run(model: SparseAutoencoder, trainer: Trainer, out: Path, prov: dict[str, Any], level_attrs: dict[str, Any],
              history: xr.Dataset, *, model_name: str, hook: str, layer: int, config_digest: str, pooling: str | None,
              **lens: Any) -> None:
    """Write ``training.nc`` (``history`` with ``prov``) and the SAE in the SAELens layout (``cfg.json``:
    :func:`~mechflow.sae.export.sae_cfg` with the SAELens metadata keywords ``lens`` and ``level_attrs`` in its
    ``mechflow`` section), then remove the run's checkpoints (unless kept)."""
    write_dataset(history.assign_attrs(prov), out / "training.nc")
    cfg = sae_cfg(model, model_name=model_name, hook_name=hook, hook_layer=layer, config_digest=config_digest,
                  pooling=pooling, **lens,
                  extra={"provenance": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in prov.items()}})
    cfg["mechflow"].update(level_attrs)
    save_sae(model, out, cfg)
    trainer.clear_checkpoints()
    log.info("wrote SAE %s (%s, %d features, %s level) to %s", trainer.run["arch"], hook, trainer.run["n_features"],
             level_attrs["level"], out)


def train_from_file(
    activations_path: str | Path,
    layer: int,
    run: dict[str, Any],
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    config_digest: str = "",
    progress: bool = True,
    code: str = "",
    num_threads: int | None = 1,
    level: str = "pooled",
    token_pooling: TokenPooling = "max",
    heads: OutputProjection | None = None,
) -> None:
    """Train the SAE ``run`` on one layer of an activations file; write the SAE directory.

    ``level="pooled"``: reads ``activations`` [prompt, layer, unit] lazily, selects ``layer`` and
    trains on one row per prompt. ``level="tokens"``: reads a token file ``activations`` [token,
    layer, unit] (rule ``extract_tokens``) and trains on every token not flagged ``excluded`` (the
    sink position pooling leaves out, :mod:`mechflow.sae.tokens`); ``val_fraction`` then holds out
    whole prompts (all their tokens), and ``features.nc`` is per prompt, the ``token_pooling`` (max or
    mean) over each prompt's kept tokens of the token-level feature activations.

    Writes atomically into ``out_dir``: ``sae_weights.safetensors`` and ``cfg.json`` (SAELens format,
    :mod:`mechflow.sae.export`), ``features.nc`` (``features`` [prompt, feature] float32 with
    text/latitude/longitude/region/place_id carried over, ``split`` [prompt]) and ``training.nc``
    (dim ``step``: loss, fvu, l0, dead_fraction, dense_fraction, lr; with a run's ``val_fraction``
    also train_* / val_* fvu, l0, dead_fraction, dense_fraction; on tokens at token level), each
    with provenance attrs (``level``, and ``token_pooling`` at token level).

    Training resumes from ``checkpoint_dir`` only when the checkpoint there was made by the same
    run settings, from the same file content (sha256), layer and level, by the same ``code`` (the
    rule's code digest); otherwise it starts from scratch and logs what differs. Once the outputs are
    written the checkpoints are removed, unless the run sets ``keep_checkpoints``. Training and
    encoding run on ``num_threads`` intra-op threads (default 1), so the outputs are bit-identical
    whatever thread count the caller set. ``heads`` (an ``attn_z`` SAE's output projection and head count):
    features.nc also gets each feature's head attribution (:func:`write_features`).
    """
    if level not in LEVELS:
        raise ValueError(f"sae level must be one of {list(LEVELS)}, got {level!r}")
    if token_pooling not in TOKEN_POOLING:
        raise ValueError(f"sae token_pooling must be one of {list(TOKEN_POOLING)}, got {token_pooling!r}")
    tokens = level == "tokens"
    out = Path(out_dir)
    input_id = None
    if checkpoint_dir is not None:
        input_id = {"sha256": file_sha256(activations_path), "layer": int(layer), **({"level": level} if tokens else {})}
    da = open_dataarray(activations_path)
    try:
        upstream = upstream_attrs(da.attrs)
        hook = str(upstream.get("hook", ""))
        level_attrs: dict[str, Any] = {"level": level}
        if tokens:
            rows = token_rows(select_token_layer(da, layer), block=int(validate_run(run)["shuffle_block"]))
            source, groups, prompt_coords = rows.source, rows.prompt_of, rows.coords
            level_attrs.update(token_pooling=token_pooling, token_rows=rows.n_tokens, token_rows_excluded=rows.n_excluded,
                               exclude=str(da.attrs.get("exclude", "")), pool_excluded=str(da.attrs.get("pool_excluded", "")))
            log.info("token level: %d tokens of %d prompts, %d flagged excluded (the sink position) left out of training",
                     rows.n_tokens, rows.n_prompts, rows.n_excluded)
        else:
            layer_da = select_layer(da, layer)
            source, groups, prompt_coords = DataArraySource(layer_da), None, layer_da
        trainer, model = _fit(source, run, checkpoint_dir=checkpoint_dir, progress=progress, input_id=input_id, code=code,
                              num_threads=num_threads, groups=groups)
        prov = provenance_attrs(config_digest, **{**upstream, "layer": int(layer), "sae_arch": trainer.run["arch"],
                                                  "sae_run": trainer.run, **level_attrs})
        val_prompts = trainer.val_rows
        if tokens and val_prompts is not None:
            val_prompts = np.unique(rows.prompt_of[val_prompts])  # rows of held-out prompts -> those prompts
        with torch_threads(num_threads):
            write_features(model, source, features_coords(model.n_features, prompt_coords, val_prompts), prov,
                           out / "features.nc", prompt_of=rows.prompt_of if tokens else None, token_pooling=token_pooling,
                           heads=heads)
        _save_run(model, trainer, out, prov, level_attrs, model.history, model_name=str(upstream.get("model", "")), hook=hook,
                  layer=int(layer), config_digest=config_digest, pooling=upstream.get("pooling"),
                  **lens_metadata(da.attrs, hook, int(layer)))
    finally:
        da.close()


#: the ``level`` of an SAE trained on corpus token shards (training.nc and cfg.json)
CORPUS_LEVEL = "corpus"
#: held-out metrics of :func:`train_from_shards` (``heldout_<name>`` in training.nc)
HELDOUT_METRICS = ("fvu", "l0", "dead_fraction", "dense_fraction")


def shard_attrs(paths: Sequence[str | Path], variable: str = "activations") -> dict[str, Any]:
    """The attrs of the first shard file; ValueError naming the file when a shard's ``hook`` or ``layer``
    differs from the first's (the shards of one SAE are one hook at one layer)."""
    first: dict[str, Any] | None = None
    for path in paths:
        with open_dataset(path) as ds:
            attrs = {**ds.attrs, **(ds[variable].attrs if variable in ds else {})}
        if first is None:
            first = attrs
        elif any(str(attrs.get(k)) != str(first.get(k)) for k in ("hook", "layer")):
            raise ValueError(f"{path} holds hook {attrs.get('hook')!r} layer {attrs.get('layer')}; the first shard "
                             f"{paths[0]} holds hook {first.get('hook')!r} layer {first.get('layer')}")
    if first is None:
        raise ValueError("no shard files")
    return first


@torch.no_grad()
def evaluate_held_out(model: SparseAutoencoder, source: RowSource, batch: int = EVAL_BATCH) -> xr.Dataset:
    """Inference metrics of ``model`` on every row of ``source``, read in contiguous batches (memory of one):
    ``heldout_`` fvu, l0, dead_fraction (latents that never fire on these rows), dense_fraction (latents firing
    on more than :data:`~mechflow.sae.metrics.DENSE_FREQ` of them) and ``heldout_tokens``; per latent
    ``heldout_feature_density`` [feature] (the fraction of rows it fires on); ``heldout_density_histogram``
    [density_bin] (latents per bin of log10 density, :func:`~mechflow.sae.metrics.density_histogram`, bin edges
    ``log10_density_lo`` / ``log10_density_hi``)."""
    device = next(model.parameters()).device
    n = source.n_rows
    ev = evaluate_batches(model, (torch.from_numpy(source.read(i, min(i + batch, n))).to(device) for i in range(0, n, batch)),
                          counts=True)
    counts = ev["counts"]
    return xr.Dataset(
        {**{f"heldout_{m}": float(ev[m]) for m in HELDOUT_METRICS},
         "heldout_tokens": np.int64(ev["n"]),
         "heldout_feature_density": ("feature", counts / ev["n"]),
         "heldout_density_histogram": ("density_bin", density_histogram(counts, ev["n"]))},
        coords={"feature": np.arange(counts.size, dtype=np.int64),
                "density_bin": np.arange(DENSITY_EDGES.size - 1, dtype=np.int64),
                "log10_density_lo": ("density_bin", DENSITY_EDGES[:-1]),
                "log10_density_hi": ("density_bin", DENSITY_EDGES[1:])})


def train_from_shards(
    shard_paths: Sequence[str | Path],
    run: dict[str, Any],
    out_dir: str | Path,
    held_out_paths: Sequence[str | Path] | None = None,
    checkpoint_dir: str | Path | None = None,
    config_digest: str = "",
    progress: bool = True,
    code: str = "",
    num_threads: int | None = 1,
    prompt_tokens: str | Path | None = None,
    token_pooling: TokenPooling = "max",
    heads: OutputProjection | None = None,
) -> None:
    """Train the SAE ``run`` on the token rows of corpus activation shards (:mod:`mechflow.corpus.activations`,
    one hook at one layer, read as one matrix in the order given by :class:`~mechflow.sae.data.ShardedSource`:
    memory holds at most two shuffle windows and two open files, whatever the token count); write the SAE
    directory as :func:`train_from_file` does, without ``features.nc``.

    Writes atomically into ``out_dir``: ``sae_weights.safetensors`` and ``cfg.json`` (SAELens layout; its
    metadata from the shards' attrs by :func:`~mechflow.sae.export.lens_metadata`: ``context_size``,
    ``prepend_bos``, the Hugging Face model and hook module; ``mechflow.level`` = ``corpus``) and
    ``training.nc`` (the training history, as :func:`train_from_file`'s). ``held_out_paths``: shards of
    held-out windows, never trained on; every row of them is evaluated with the final weights
    (:func:`evaluate_held_out`) and the ``heldout_*`` variables are added to ``training.nc`` (and
    ``metrics.heldout`` to ``cfg.json``). A run's ``val_fraction`` still holds out blocks of the training rows.
    ``prompt_tokens``: a token file of prompts at the same hook (rule ``extract_tokens``); the trained SAE encodes
    every token but the flagged sink and ``features.nc`` gets each prompt's ``token_pooling`` of them
    (:func:`encode_prompt_tokens`); every prompt is in split ``validation``: none was trained on. ``heads``: as
    :func:`train_from_file`'s, for features.nc.

    Checkpoints resume only for the same run, the same shard contents in the same order and the same ``code``
    (see :func:`train_from_file`); ``num_threads`` fixes the intra-op threads, so the outputs are bit-identical
    whatever the caller's setting.
    """
    shard_paths = [Path(p) for p in shard_paths]
    out = Path(out_dir)
    attrs = shard_attrs(shard_paths)
    held = None if held_out_paths is None else [Path(p) for p in held_out_paths]
    if held is not None:
        held_attrs = shard_attrs(held)
        if any(str(held_attrs.get(k)) != str(attrs.get(k)) for k in ("hook", "layer")):
            raise ValueError(f"the held-out shards hold hook {held_attrs.get('hook')!r} layer {held_attrs.get('layer')}, "
                             f"the training shards hook {attrs.get('hook')!r} layer {attrs.get('layer')}")
        if set(held) & set(shard_paths):
            raise ValueError(f"shards both trained on and held out: {sorted(map(str, set(held) & set(shard_paths)))}")
    hook, layer = str(attrs.get("hook", "")), int(attrs.get("layer", -1))
    input_id = None
    if checkpoint_dir is not None:
        input_id = {"shards_sha256": digest([file_sha256(p) for p in shard_paths], 64), "level": CORPUS_LEVEL}
    with ShardedSource(shard_paths) as source, contextlib.ExitStack() as stack:
        held_source = None if held is None else stack.enter_context(ShardedSource(held))
        if held_source is not None and held_source.d != source.d:
            raise ValueError(f"the held-out shards have {held_source.d} units, the training shards {source.d}")
        level_attrs: dict[str, Any] = {"level": CORPUS_LEVEL, "token_rows": source.n_rows, "shards": len(shard_paths),
                                       "context_size": int(attrs.get("context_size", 0)),
                                       "sink_position": int(attrs.get("sink_position", 0))}
        trainer, model = _fit(source, run, checkpoint_dir=checkpoint_dir, progress=progress, input_id=input_id, code=code,
                              num_threads=num_threads)
        history = model.history
        if held_source is not None:
            with torch_threads(num_threads):
                held_ds = evaluate_held_out(model, held_source)
            history = xr.merge([history, held_ds])
            model.metrics = {**model.metrics, "heldout": {m: float(held_ds[f"heldout_{m}"]) for m in HELDOUT_METRICS}}
            level_attrs["heldout_token_rows"] = held_source.n_rows
        upstream = upstream_attrs(attrs)
        prov = provenance_attrs(config_digest, **{**upstream, "layer": layer, "sae_arch": trainer.run["arch"],
                                                  "sae_run": trainer.run, **level_attrs})
        if prompt_tokens is not None:
            with torch_threads(num_threads):
                encode_prompt_tokens(model, prompt_tokens, layer, {**prov, "token_pooling": token_pooling},
                                     out / "features.nc", token_pooling, heads=heads)
        _save_run(model, trainer, out, prov, level_attrs, history, model_name=str(upstream.get("model", "")), hook=hook,
                  layer=layer, config_digest=config_digest, pooling=None, **lens_metadata(attrs, hook, layer))


def encode_prompt_tokens(model: SparseAutoencoder, tokens_path: str | Path, layer: int, attrs: dict[str, Any],
                         path: str | Path, token_pooling: TokenPooling = "max", heads: OutputProjection | None = None) -> Path:
    """``features.nc`` of prompts the SAE was not trained on: every token of a token file (``activations`` [token,
    layer, unit], rule ``extract_tokens``) at ``layer`` but the flagged sink, encoded and pooled per prompt
    (``token_pooling``), streamed batch by batch (:func:`write_features`); split ``validation`` for every prompt."""
    da = open_dataarray(tokens_path)
    try:
        rows = token_rows(select_token_layer(da, layer), block=ENCODE_BATCH)
        every = np.arange(rows.n_prompts)
        return write_features(model, rows.source, features_coords(model.n_features, rows.coords, every), attrs, path,
                              prompt_of=rows.prompt_of, token_pooling=token_pooling, heads=heads)
    finally:
        da.close()


def apply_corpus_sae(corpus_dir: str | Path, prompt_tokens: str | Path, out_dir: str | Path,
                     token_pooling: TokenPooling = "max", config_digest: str = "", num_threads: int | None = 1,
                     heads: OutputProjection | None = None) -> None:
    """One prompt set's SAE run directory from an SAE trained on a text corpus (:func:`train_from_shards`, written to
    ``corpus_dir`` once for every prompt set): its :data:`~mechflow.contracts.SAE_CORPUS_FILES` (weights, cfg.json,
    training.nc) copied byte for byte into ``out_dir``, and ``features.nc`` of the prompts (:func:`encode_prompt_tokens`:
    every token of ``prompt_tokens`` at the SAE's layer but the sink, pooled per prompt by ``token_pooling``; split
    ``validation`` for every prompt). features.nc's attrs: the prompts' provenance (dataset, model, hook), the SAE's
    (arch, run, level, layer, shards) and ``corpus_sae``, the folder it was trained in. Atomic, as every output."""
    src, out = Path(corpus_dir), Path(out_dir)
    if token_pooling not in TOKEN_POOLING:
        raise ValueError(f"sae token_pooling must be one of {list(TOKEN_POOLING)}, got {token_pooling!r}")
    with open_dataset(src / "training.nc") as training:
        trained = dict(training.attrs)
    if trained.get("level") != CORPUS_LEVEL:
        raise ValueError(f"{src / 'training.nc'} is an SAE trained at level {trained.get('level')!r}, not on a corpus")
    with open_dataset(prompt_tokens) as tokens:
        prompts = upstream_attrs({**tokens.attrs, **(tokens["activations"].attrs if "activations" in tokens else {})})
    if str(prompts.get("hook", trained.get("hook"))) != str(trained.get("hook")):
        raise ValueError(f"{prompt_tokens} holds hook {prompts.get('hook')!r}; the SAE in {src} was trained on "
                         f"hook {trained.get('hook')!r}")
    model = load_sae(src)
    keep = {k: v for k, v in trained.items() if k not in ("mechflow_version", "created", "config_digest")}
    attrs = provenance_attrs(config_digest, **{**keep, **prompts, "token_pooling": token_pooling, "corpus": trained.get("dataset", ""),
                                               "corpus_sae": src.as_posix()})
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(num_threads):
        encode_prompt_tokens(model, prompt_tokens, int(trained["layer"]), attrs, out / "features.nc", token_pooling,
                             heads=heads)
    for name in SAE_CORPUS_FILES:
        atomic_write_bytes(out / name, (src / name).read_bytes())
    log.info("applied the corpus SAE %s to %s: %s", src, prompt_tokens, out / "features.nc")
