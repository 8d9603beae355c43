"""The training loop shared by every architecture, and the ``train`` API.

Adam with linear warm-up and linear decay, global gradient clipping, decoder-parallel gradient
removal for unit-norm decoders, dead-latent tracking, metrics every ``log_every`` steps,
checkpoints every ``checkpoint_every`` steps. Minibatch ``s`` is a pure function of ``(seed, s)``
(:mod:`mechflow.sae.data`), so a resumed run ends with the same weights as an uninterrupted one.

A checkpoint is resumed only by a run of the same identity (settings, data shape, input content,
code: :func:`mechflow.sae.checkpoint.run_identity`); any other is removed and training starts from
scratch, with one log line naming what differs. Training runs at a fixed intra-op thread count
(``num_threads``, default 1: :mod:`mechflow.kernels.threads`), so the weights are bit-identical
whatever ``torch.set_num_threads`` the caller chose.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from mechflow.devices import resolve_device
from mechflow.io import digest
from mechflow.kernels.threads import torch_threads
from mechflow.sae.archs import SparseAutoencoder, build_sae
from mechflow.sae.checkpoint import (
    clear_checkpoints,
    identity_mismatch,
    latest_checkpoint,
    load_checkpoint,
    run_identity,
    save_checkpoint,
    saved_identity,
)
from mechflow.sae.config import DEFAULT_RUN, arch_options, parse_run, validate_run
from mechflow.sae.data import (
    BatchStream,
    RowSource,
    SubsetSource,
    as_source,
    geometric_median,
    norm_scaling_factor,
    read_rows,
    source_sha256,
    split_rows,
)
from mechflow.sae.metrics import DENSE_FREQ, evaluate_batches
from mechflow.sae.tokens import split_prompts

log = logging.getLogger(__name__)

#: training metrics (every log_every steps, averaged over the interval; dense_fraction: latents active on more
#: than DENSE_FREQ of the interval's samples)
METRICS = ("loss", "fvu", "l0", "dead_fraction", "dense_fraction", "lr")
#: validation metrics (every val_every steps and at the last step, NaN in other rows), with inference semantics
#: on the validation rows (val_*) and on a fixed sample of training rows (train_*)
VAL_METRICS = tuple(f"{part}_{m}" for part in ("train", "val") for m in ("fvu", "l0", "dead_fraction", "dense_fraction"))
#: rows of each periodic evaluation at most (a seeded sample of the validation rows; the final one uses them all)
VAL_ROWS = 8192
EVAL_BATCH = 4096


class TrainingStopped(RuntimeError):
    """Raised when ``stop_after`` ends a run early (a simulated kill, for tests)."""


def lr_factor(step: int, steps: int, warmup: float, decay: float) -> float:
    """Learning-rate multiplier of ``step`` (0-based): linear warm-up, constant, linear decay to 0."""
    n_warm, n_decay = int(warmup * steps), int(decay * steps)
    if n_warm and step < n_warm:
        return (step + 1) / n_warm
    if n_decay and step >= steps - n_decay:
        return (steps - step) / n_decay
    return 1.0


def _init_seed(seed: int) -> int:
    """Seed of the weight initialisation, a stream distinct from a plain ``manual_seed(seed)``."""
    return int(digest({"sae_init": seed}), 16) % (2**63)


class Trainer:
    """Train one SAE on a :class:`~mechflow.sae.data.RowSource` according to a run dict.

    ``input_id``: identity of the rows for the checkpoint check (e.g. ``{"sha256": <file digest>,
    "layer": 5}``); None hashes the rows themselves when a checkpoint is read or written.
    ``code``: digest of the code that trains (a checkpoint of other code is not resumed).
    ``num_threads``: intra-op threads while training (None: leave the caller's setting; the weights
    then depend on it).
    ``val_source``: validation rows (same d); or the run's ``val_fraction`` holds out whole blocks of
    ``source`` (:func:`~mechflow.sae.data.split_rows`), which then trains on the rest. Either adds the
    :data:`VAL_METRICS` to the history and ``model.metrics``; neither changes the training of a run
    with the same training rows.
    ``groups`` [n_rows] int (0..n_groups-1, e.g. each token row's prompt): with ``val_fraction``, whole
    groups are held out instead of blocks (:func:`~mechflow.sae.tokens.split_prompts`), so no held-out
    prompt has a token in training.
    """

    def __init__(self, source: RowSource, run: dict[str, Any], checkpoint_dir: str | Path | None = None,
                 progress: bool = False, *, input_id: dict[str, Any] | None = None, code: str = "",
                 num_threads: int | None = 1, val_source: RowSource | None = None, groups: np.ndarray | None = None):
        self.run = validate_run(run)
        r = self.run
        if val_source is not None and r["val_fraction"] > 0:
            raise ValueError(f"pass either a validation matrix or val_fraction (got {r['val_fraction']}), not both")
        if val_source is not None and val_source.d != source.d:
            raise ValueError(f"validation rows have d={val_source.d}, training rows d={source.d}")
        #: rows of ``source`` held out for validation (None: no val_fraction)
        self.val_rows: np.ndarray | None = None
        if groups is not None and np.shape(groups) != (source.n_rows,):
            raise ValueError(f"groups must give one group per row: shape {np.shape(groups)}, {source.n_rows} rows")
        if r["val_fraction"] > 0:
            if groups is None:
                train_rows, val_rows = split_rows(source.n_rows, r["val_fraction"], r["seed"], r["shuffle_block"])
            else:
                train_rows, val_rows = split_prompts(groups, r["val_fraction"], r["seed"])
            self.val_rows = val_rows
            val_source = SubsetSource(source, val_rows, r["shuffle_block"])
            source = SubsetSource(source, train_rows, r["shuffle_block"])
        self.source = source
        self.val_source = val_source
        #: the run with every derived (null) key filled in for this data (mechflow.sae.defaults)
        self.resolved = parse_run(self.run).resolve(source.n_rows, source.d)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.progress = progress
        self.device = resolve_device(self.run["device"], ValueError, "sae run")
        self.input_id = None if input_id is None else dict(input_id)
        self.code = str(code)
        self.num_threads = num_threads
        self._identity: dict[str, Any] | None = None
        self.stream = BatchStream(source, r["batch_size"], r["seed"], r["shuffle_block"], r["shuffle_window"])

    def identity(self) -> dict[str, Any]:
        """What the weights depend on (:func:`~mechflow.sae.checkpoint.run_identity`), computed once."""
        if self._identity is None:
            input_id = self.input_id if self.input_id is not None else {"sha256": source_sha256(self.source)}
            self._identity = run_identity(self.run, self.source.n_rows, self.source.d, input_id, self.code)
        return self._identity

    def clear_checkpoints(self) -> None:
        """Remove this run's checkpoints unless the run keeps them (call once its outputs are written)."""
        if not self.run["keep_checkpoints"]:
            clear_checkpoints(self.checkpoint_dir)

    def _resume(self, model: SparseAutoencoder, opt: torch.optim.Optimizer) -> tuple[int, dict[str, Any] | None]:
        """(steps done, saved state) from the newest checkpoint of this run; (0, None) to start fresh."""
        ckpt = latest_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            return 0, None
        why = identity_mismatch(saved_identity(ckpt), self.identity())
        if why is not None:
            log.warning("checkpoint %s was made from %s; training from scratch", ckpt, why)
            clear_checkpoints(self.checkpoint_dir)
            return 0, None
        start, state = load_checkpoint(ckpt, model, opt)
        log.info("resumed SAE training from %s (step %d)", ckpt, start)
        return start, state

    def _init_model(self) -> tuple[SparseAutoencoder, float]:
        r = self.resolved
        sample = self.stream.sample()
        scale = norm_scaling_factor(sample) if r["normalize_activations"] == "expected_average_only_in" else 1.0
        sample = sample * scale
        b_dec_of = {"geometric_median": geometric_median, "mean": lambda s: s.mean(0), "zeros": lambda s: torch.zeros(s.shape[1])}
        b_dec = b_dec_of[r["b_dec_init"]](sample)
        model = build_sae(r["arch"], self.source.d, r["n_features"], r["k"], **arch_options(r))
        gen = torch.Generator().manual_seed(_init_seed(r["seed"]))
        model.init_weights(gen, b_dec)
        model.init_from_data(sample)
        return model.to(self.device), scale

    def fit(self, stop_after: int | None = None) -> SparseAutoencoder:
        """Train (resuming from the newest matching checkpoint); returns the model in eval mode.

        The returned model reads raw activations: the normalisation factor is folded into its
        weights (``model.scaling_factor`` records it). ``model.history`` holds the metrics
        (``training.nc`` contents) as an xarray Dataset with dim ``step``.
        """
        with torch_threads(self.num_threads):
            return self._fit(stop_after)

    def val_every(self) -> int:
        """Steps between validation evaluations (a null ``val_every``: the multiple of log_every nearest steps / 20)."""
        r = self.run
        if r["val_every"] is not None:
            return int(r["val_every"])
        return max(1, round(r["steps"] / 20 / r["log_every"])) * r["log_every"]

    def _eval_batches(self, source: RowSource, rows: np.ndarray, scale: float):
        for i in range(0, rows.size, EVAL_BATCH):
            x = torch.from_numpy(read_rows(source, rows[i : i + EVAL_BATCH], self.run["shuffle_block"]))
            yield x.to(self.device) * scale if scale != 1.0 else x.to(self.device)

    def _eval_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows) of a periodic evaluation: seeded samples of at most VAL_ROWS."""
        rng = np.random.Generator(np.random.PCG64([self.run["seed"], 0xE7A1]))

        def pick(n: int) -> np.ndarray:
            return np.arange(n) if n <= VAL_ROWS else np.sort(rng.choice(n, VAL_ROWS, replace=False))

        return pick(self.source.n_rows), pick(self.val_source.n_rows)

    @torch.no_grad()
    def _validate(self, model: SparseAutoencoder, scale: float, final: bool) -> dict[str, float]:
        """Inference metrics on training and validation rows (all validation rows when ``final``)."""
        train_rows, val_rows = self._eval_rows()
        if final:
            val_rows = np.arange(self.val_source.n_rows)
        out = {}
        for part, source, rows in (("train", self.source, train_rows), ("val", self.val_source, val_rows)):
            ev = evaluate_batches(model, self._eval_batches(source, rows, scale))
            out.update({f"{part}_{m}": float(ev[m]) for m in ("fvu", "l0", "dead_fraction", "dense_fraction")})
        return out

    def _fit(self, stop_after: int | None) -> SparseAutoencoder:
        r = self.resolved
        steps = r["steps"]
        model, scale = self._init_model()
        groups = model.param_groups()
        params = [p for g in groups for p in g["params"]]
        opt = torch.optim.Adam(groups, lr=r["lr"], betas=tuple(r["adam_betas"]))
        validating = self.val_source is not None
        names = ("step", *METRICS, *(VAL_METRICS if validating else ()))
        history: dict[str, list[float]] = {m: [] for m in names}
        acc = {"loss": 0.0, "fvu": 0.0, "l0": 0.0, "n": 0, "samples": 0}
        val_every = self.val_every()
        start, state = self._resume(model, opt)
        if state is not None:
            history, acc, scale = state["history"], state["acc"], state["scale"]
        dead_after = r["dead_after"]
        bar = tqdm(total=steps, initial=start, desc=f"sae {r['arch']}", unit="step", disable=not self.progress, mininterval=1.0)
        model.train()
        for step in range(start, steps):
            x = self.stream.batch(step).to(self.device, non_blocking=True)
            if scale != 1.0:
                x = x * scale
            lr = r["lr"] * lr_factor(step, steps, r["warmup"], r["decay"])
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            dead = model.since_fired >= dead_after
            out = model.training_loss(x, step, steps, dead)
            loss_value = float(out.loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"SAE loss became {loss_value} at step {step}; lower lr or check the inputs")
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            model.after_backward()
            if r["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(params, r["grad_clip"])
            opt.step()
            model.after_step(step)
            with torch.no_grad():
                model.since_fired += x.shape[0]
                model.since_fired[out.fired] = 0
                model.fire_count += out.counts if out.counts is not None else out.fired.long()
            acc["loss"] += loss_value
            acc["fvu"] += out.fvu
            acc["l0"] += out.l0
            acc["n"] += 1
            acc["samples"] += x.shape[0]
            done = step + 1
            if done % r["log_every"] == 0 or done == steps:
                n = acc["n"]
                dense = float((model.fire_count.double() / max(acc["samples"], 1) > DENSE_FREQ).double().mean())
                row = {"step": done, "loss": acc["loss"] / n, "fvu": acc["fvu"] / n, "l0": acc["l0"] / n,
                       "dead_fraction": float((model.since_fired >= dead_after).float().mean()),
                       "dense_fraction": dense, "lr": lr}
                if validating:
                    due = done % val_every == 0 or done == steps
                    row.update(self._validate(model, scale, final=done == steps) if due else dict.fromkeys(VAL_METRICS, math.nan))
                for key, val in row.items():
                    history[key].append(val)
                acc = {"loss": 0.0, "fvu": 0.0, "l0": 0.0, "n": 0, "samples": 0}
                with torch.no_grad():
                    model.fire_count.zero_()
                bar.set_postfix(fvu=f"{row['fvu']:.4f}", l0=f"{row['l0']:.1f}", dead=f"{row['dead_fraction']:.2f}", refresh=False)
            bar.update(1)
            if self.checkpoint_dir is not None and r["checkpoint_every"] and done % r["checkpoint_every"] == 0 and done < steps:
                save_checkpoint(self.checkpoint_dir, done, model, opt,
                                {"identity": self.identity(), "history": history, "acc": acc, "scale": scale})
            if stop_after is not None and done >= stop_after and done < steps:
                bar.close()
                raise TrainingStopped(f"stopped after step {done} of {steps}")
        bar.close()
        model.eval()
        model.fold_scaling(scale)
        model.scaling_factor = scale
        model.run = dict(self.run)
        model.resolved = dict(r)
        model.history = history_dataset(history)
        model.metrics = final_metrics(model.history)
        return model


def history_dataset(history: dict[str, list[float]]) -> xr.Dataset:
    """Metrics as a Dataset with dim ``step`` (the contents of ``training.nc``): :data:`METRICS`, plus
    :data:`VAL_METRICS` when the run validates (NaN in rows without an evaluation)."""
    step = np.asarray(history["step"], dtype=np.int64)
    names = [m for m in (*METRICS, *VAL_METRICS) if m in history]
    return xr.Dataset({m: ("step", np.asarray(history[m], dtype=np.float64)) for m in names}, coords={"step": step})


def final_metrics(history: xr.Dataset) -> dict[str, dict[str, float]]:
    """``{"train": {...}, "val": {...}}`` at the last step: fvu, l0, dead_fraction, dense_fraction.

    With validation both come from the final evaluation (inference semantics; ``val`` on every
    validation row, ``train`` on a sample of at most VAL_ROWS training rows). Without, ``train``
    holds the last history row (training-time means over the last log interval) and ``val`` is absent.
    """
    last = history.isel(step=-1)
    keys = ("fvu", "l0", "dead_fraction", "dense_fraction")
    if "val_fvu" in history:
        return {part: {m: float(last[f"{part}_{m}"]) for m in keys} for part in ("train", "val")}
    return {"train": {m: float(last[m]) for m in keys}}


def train(
    x: torch.Tensor | np.ndarray | xr.DataArray,
    arch: str = DEFAULT_RUN["arch"],
    n_features: int = DEFAULT_RUN["n_features"],
    k: int | None = DEFAULT_RUN["k"],
    steps: int = DEFAULT_RUN["steps"],
    seed: int = DEFAULT_RUN["seed"],
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = False,
    stop_after: int | None = None,
    code: str = "",
    num_threads: int | None = 1,
    x_val: torch.Tensor | np.ndarray | xr.DataArray | None = None,
    **run: Any,
) -> SparseAutoencoder:
    """Train an SAE on ``x`` [n_samples, d_in] (tensor, array or 2-D DataArray, read lazily).

    Other run keys (batch_size, lr, normalize_activations, architecture options...) are passed as
    keyword arguments; see :class:`mechflow.sae.archs.SAERunConfig` and each architecture's config
    (defaults, bounds, docs; ``k=None`` takes the default k). Returns the model in eval mode
    with ``W_dec`` [n_features, d_in]; ``model.history`` holds the training metrics.
    ``stop_after`` ends the run early with :class:`TrainingStopped` (to test resuming).
    ``checkpoint_dir``: resume from a checkpoint there of the same run, data (hashed) and ``code``;
    its checkpoints are removed once training ends unless ``keep_checkpoints=True``.
    ``num_threads``: intra-op threads while training (default 1: bit-identical whatever the
    caller's ``torch.set_num_threads``; None leaves that setting).

    Validation: ``x_val`` [n_val, d_in] (held-out rows), or ``val_fraction=f`` (a run key: whole
    ``shuffle_block`` blocks of ``x`` drawn by ``seed`` are held out and not trained on). Either adds
    ``train_*`` / ``val_*`` fvu, l0, dead_fraction, dense_fraction columns to ``model.history``
    (every ``val_every`` steps and at the last) and fills ``model.metrics`` =
    ``{"train": {...}, "val": {...}}``; without, ``model.metrics`` holds ``{"train": ...}`` from
    the last history row. ``model.resolved`` is the run with its derived (null) keys filled in.
    """
    spec = {"arch": arch, "n_features": n_features, "steps": steps, "seed": seed, **run}
    if k is not None:
        spec["k"] = k
    trainer = Trainer(as_source(x), spec, checkpoint_dir=checkpoint_dir, progress=progress, code=code,
                      num_threads=num_threads, val_source=None if x_val is None else as_source(x_val))
    model = trainer.fit(stop_after=stop_after)
    trainer.clear_checkpoints()
    return model
