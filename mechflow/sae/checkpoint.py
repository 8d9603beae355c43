"""Training checkpoints: safetensors (model + optimiser tensors) and a JSON state; no pickle.

Layout under ``checkpoint_dir``: ``step_{N:08d}/state.safetensors`` + ``state.json``, each step
directory written atomically, then ``latest.json`` (atomically) names the newest one. Older step
directories are pruned once the pointer has moved on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mechflow.io import atomic_path, atomic_write_text

FORMAT = 1
KEEP = 2


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
    atomic_write_text(root / "latest.json", json.dumps({"step": step, "dir": name}))
    for old in sorted(root.glob("step_*"))[:-KEEP]:
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The newest complete checkpoint directory, or None."""
    if checkpoint_dir is None:
        return None
    root = Path(checkpoint_dir)
    pointer = root / "latest.json"
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
