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
from mechflow.sae.config import DEFAULT_RUN, arch_options, validate_run
from mechflow.sae.data import BatchStream, RowSource, as_source, geometric_median, norm_scaling_factor, source_sha256

log = logging.getLogger(__name__)

METRICS = ("loss", "fvu", "l0", "dead_fraction", "lr")


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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"sae run asks for device {device!r} but CUDA is not available")
    return torch.device(device)


class Trainer:
    """Train one SAE on a :class:`~mechflow.sae.data.RowSource` according to a run dict.

    ``input_id``: identity of the rows for the checkpoint check (e.g. ``{"sha256": <file digest>,
    "layer": 5}``); None hashes the rows themselves when a checkpoint is read or written.
    ``code``: digest of the code that trains (a checkpoint of other code is not resumed).
    ``num_threads``: intra-op threads while training (None: leave the caller's setting; the weights
    then depend on it).
    """

    def __init__(self, source: RowSource, run: dict[str, Any], checkpoint_dir: str | Path | None = None,
                 progress: bool = False, *, input_id: dict[str, Any] | None = None, code: str = "",
                 num_threads: int | None = 1):
        self.run = validate_run(run)
        self.source = source
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.progress = progress
        self.device = resolve_device(self.run["device"])
        self.input_id = None if input_id is None else dict(input_id)
        self.code = str(code)
        self.num_threads = num_threads
        self._identity: dict[str, Any] | None = None
        r = self.run
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
        r = self.run
        sample = self.stream.sample()
        scale = norm_scaling_factor(sample) if r["normalize_activations"] == "expected_average_only_in" else 1.0
        sample = sample * scale
        b_dec_of = {"geometric_median": geometric_median, "mean": lambda s: s.mean(0), "zeros": lambda s: torch.zeros(s.shape[1])}
        b_dec = b_dec_of[r["b_dec_init"]](sample)
        model = build_sae(r["arch"], self.source.d, r["n_features"], r["k"], **arch_options(r))
        gen = torch.Generator().manual_seed(_init_seed(r["seed"]))
        model.init_weights(gen, b_dec)
        return model.to(self.device), scale

    def fit(self, stop_after: int | None = None) -> SparseAutoencoder:
        """Train (resuming from the newest matching checkpoint); returns the model in eval mode.

        The returned model reads raw activations: the normalisation factor is folded into its
        weights (``model.scaling_factor`` records it). ``model.history`` holds the metrics
        (``training.nc`` contents) as an xarray Dataset with dim ``step``.
        """
        with torch_threads(self.num_threads):
            return self._fit(stop_after)

    def _fit(self, stop_after: int | None) -> SparseAutoencoder:
        r = self.run
        steps = r["steps"]
        model, scale = self._init_model()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=r["lr"], betas=tuple(r["adam_betas"]))
        history: dict[str, list[float]] = {m: [] for m in ("step", *METRICS)}
        acc = {"loss": 0.0, "fvu": 0.0, "l0": 0.0, "n": 0}
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
                g["lr"] = lr
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
            acc["loss"] += loss_value
            acc["fvu"] += out.fvu
            acc["l0"] += out.l0
            acc["n"] += 1
            done = step + 1
            if done % r["log_every"] == 0 or done == steps:
                n = acc["n"]
                row = {"step": done, "loss": acc["loss"] / n, "fvu": acc["fvu"] / n, "l0": acc["l0"] / n,
                       "dead_fraction": float((model.since_fired >= dead_after).float().mean()), "lr": lr}
                for key, val in row.items():
                    history[key].append(val)
                acc = {"loss": 0.0, "fvu": 0.0, "l0": 0.0, "n": 0}
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
        model.run = dict(r)
        model.history = history_dataset(history)
        return model


def history_dataset(history: dict[str, list[float]]) -> xr.Dataset:
    """Metrics as a Dataset with dim ``step`` (the contents of ``training.nc``)."""
    step = np.asarray(history["step"], dtype=np.int64)
    return xr.Dataset(
        {m: ("step", np.asarray(history[m], dtype=np.float64)) for m in METRICS},
        coords={"step": step},
    )


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
    """
    spec = {"arch": arch, "n_features": n_features, "steps": steps, "seed": seed, **run}
    if k is not None:
        spec["k"] = k
    trainer = Trainer(as_source(x), spec, checkpoint_dir=checkpoint_dir, progress=progress, code=code,
                      num_threads=num_threads)
    model = trainer.fit(stop_after=stop_after)
    trainer.clear_checkpoints()
    return model
