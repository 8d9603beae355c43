"""Training checkpoints: safetensors (model + optimiser tensors) and a JSON state; no pickle.

Layout under ``checkpoint_dir``: ``step_{N:08d}/state.safetensors`` + ``state.json``, each step
directory written atomically, then ``latest.json`` (atomically) names the newest one. Older step
directories are pruned once the pointer has moved on.

A checkpoint records the *identity* of what produced it (:func:`run_identity`: the run settings
that shape the result, the data's shape, the input's content digest and the code digest); a run
resumes from it only when its own identity is the same (:func:`identity_mismatch` says what differs).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechflow.io import TMP_MARK, atomic_path, atomic_write_text, canonical_json, digest

FORMAT = 1
KEEP = 2
POINTER = "latest.json"
#: run keys that do not change the trained weights (so a checkpoint made with other values resumes)
NOT_IDENTITY = ("checkpoint_every", "device", "keep_checkpoints")


def run_identity(run: dict[str, Any], n_rows: int, d: int, input_id: dict[str, Any], code: str) -> dict[str, Any]:
    """What a checkpoint's weights depend on: run settings (less :data:`NOT_IDENTITY`), data shape
    ``[n_rows, d]``, input identity (e.g. ``{"sha256": ...}`` of its content) and code digest."""
    identity = {"run": {k: v for k, v in run.items() if k not in NOT_IDENTITY}, "shape": [int(n_rows), int(d)],
                "input": dict(input_id), "code": str(code)}
    return json.loads(canonical_json(identity))  # as a checkpoint's JSON gives it back (tuples -> lists)


def identity_digest(identity: dict[str, Any]) -> str:
    """Digest of a :func:`run_identity`."""
    return digest(identity, length=32)


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text  # sha256 hex digests: the first 12 characters


def identity_mismatch(saved: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """None when ``saved`` equals ``current``; else what differs, as words (for one log line)."""
    if saved is None:
        return "unrecorded inputs (a checkpoint of an older mechflow)"
    if identity_digest(saved) == identity_digest(current):
        return None
    parts = []
    sin, cin = saved.get("input", {}), current["input"]
    for key in sorted(set(sin) | set(cin)):
        if sin.get(key) != cin.get(key):
            label = "input data" if key == "sha256" else f"input {key}"
            parts.append(f"other {label} ({key} {_short(sin.get(key))}, now {_short(cin.get(key))})")
    if saved.get("shape") != current["shape"]:
        parts.append(f"data of shape {saved.get('shape')} (now {current['shape']})")
    srun, crun = saved.get("run", {}), current["run"]
    keys = [k for k in sorted(set(srun) | set(crun)) if srun.get(k) != crun.get(k)]
    if keys:
        parts.append(f"other run settings ({', '.join(keys)})")
    if saved.get("code") != current["code"]:
        parts.append(f"other code (digest {_short(saved.get('code'))}, now {_short(current['code'])})")
    return " and ".join(parts) or "another run"


def saved_identity(path: str | Path) -> dict[str, Any] | None:
    """The identity recorded in checkpoint ``path`` (None for a checkpoint without one)."""
    meta = json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
    return meta.get("state", {}).get("identity")


def clear_checkpoints(checkpoint_dir: str | Path | None) -> None:
    """Remove every checkpoint under ``checkpoint_dir`` (step directories, pointer, unfinished
    temporaries), then the directory itself if nothing else is left in it."""
    if checkpoint_dir is None:
        return
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return
    for path in root.iterdir():
        ours = path.name.startswith(("step_", ".step_")) or path.name == POINTER or path.name.startswith(f".{POINTER}")
        if not ours or (path.name.startswith(".") and TMP_MARK not in path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        root.rmdir()


def save_checkpoint(
    checkpoint_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write the checkpoint of ``step`` (steps completed) and point ``latest.json`` at it."""
    root = Path(checkpoint_dir)
    name = f"step_{step:08d}"
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, val in st.items():
            if not isinstance(val, torch.Tensor):
                raise ValueError(f"optimizer state {key!r} is not a tensor; cannot checkpoint without pickle")
            tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous().clone()
    meta = {"format": FORMAT, "step": step, "param_groups": opt["param_groups"], "state": state}
    with atomic_path(root / name) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    atomic_write_text(root / POINTER, json.dumps({"step": step, "dir": name}))
    for old in sorted(root.glob("step_*"))[:-KEEP]:
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    if checkpoint_dir is None:
        return None
    root = Path(checkpoint_dir)
    pointer = root / POINTER
    if pointer.exists():
        path = root / json.loads(pointer.read_text(encoding="utf-8"))["dir"]
        if (path / "state.json").exists() and (path / "state.safetensors").exists():
            return path
    done = [p for p in sorted(root.glob("step_*")) if (p / "state.json").exists() and (p / "state.safetensors").exists()]
    return done[-1] if done else None


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, Any]]:
    """Restore ``model`` and ``optimizer`` in place; returns (step, saved state dict)."""
    path = Path(path)
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')}, expected {FORMAT}")
    tensors = load_file(str(path / "state.safetensors"))
    device = next(model.parameters()).device
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_sd, strict=True)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = val if name == "step" else val.to(device)
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), meta["state"]
