"""Input coercion and checks of a semi-NMF fit: the matrix A (as sample blocks), the sparsity rule, a caller's G0."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechflow.devices import resolve_device
from mechflow.runconfig import check_field
from mechflow.snmf.blocks import SampleBlocks
from mechflow.snmf.config import SNMFError, SNMFRunConfig
from mechflow.snmf.result import SAMPLE_DIM, UNIT_DIM


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float in (0, 1] (the bounds of :class:`SNMFRunConfig`), else :class:`SNMFError`."""
    return check_field(SNMFRunConfig, "sparsity", sparsity, label="semi-NMF")


def n_keep_for(sparsity: float, n_units: int) -> int:
    """Units kept per factor: ``ceil(sparsity * n_units)`` (product rounded to 9 decimals first, so
    e.g. 0.07 * 100 keeps 7, not 8); always between 1 and ``n_units``."""
    sparsity = check_sparsity(sparsity)
    return min(n_units, max(1, math.ceil(round(sparsity * n_units, 9))))


def as_blocks(
    A: Any, dtype: torch.dtype | None, device: str | torch.device | None, in_memory: bool = True
) -> tuple[SampleBlocks, np.ndarray | None, dict[str, np.ndarray]]:
    """A (numpy, torch or xarray) -> :class:`SampleBlocks` [units, samples], unit labels, prompt coords.

    A DataArray with a ``unit`` dim is read as (unit, other), in whichever order it is stored; its unit
    labels and 1-D coordinates along the sample dim (renamed ``prompt``) are returned. A DataArray
    opened lazily from a file is read block by block, never whole: with ``in_memory=False`` at every
    pass, so the fit holds one block of it at a time. Pass it as opened, not transposed (xarray reads a
    lazily transposed array by vectorised indexing, which is slow and not bounded). device: None keeps
    A's own device; else ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`mechflow.devices.resolve_device`).
    dtype defaults to float64 on CPU, float32 on CUDA.
    """
    unit_coord: np.ndarray | None = None
    prompt_coords: dict[str, np.ndarray] = {}
    if isinstance(A, xr.DataArray):
        if A.ndim != 2:
            raise SNMFError(
                f"A must be 2-D [unit, prompt]; got dims {A.dims} (select one layer first, e.g. A.sel(layer=5))"
            )
        if UNIT_DIM in A.dims:
            (sample_dim,) = [d for d in A.dims if d != UNIT_DIM]
            unit_dim = UNIT_DIM
        else:
            unit_dim, sample_dim = A.dims
        if unit_dim in A.coords:
            unit_coord = np.asarray(A[unit_dim].values)
        prompt_coords = {
            (SAMPLE_DIM if k == sample_dim else str(k)): np.asarray(v.values)
            for k, v in A.coords.items()
            if v.dims == (sample_dim,)
        }
        _check_dtype(A.dtype, "xarray DataArray")
        # basic indexing along the stored layout (a lazily transposed file array is read by vectorised,
        # whole-array indexing); each block is transposed to [units, b] after it is read
        variable, samples_first = A.variable, A.dims[0] == sample_dim

        def read(start: int, stop: int) -> np.ndarray:
            block = np.asarray(variable.isel({sample_dim: slice(start, stop)}).values)
            return block.T if samples_first else block

        shape = (int(A.sizes[unit_dim]), int(A.sizes[sample_dim]))
        source_device = torch.device("cpu")
    else:
        if isinstance(A, torch.Tensor):
            t = A.detach()
            if t.is_complex():
                raise SNMFError("A must be real, got a complex tensor")
        else:
            try:
                arr = np.asarray(A)
            except (TypeError, ValueError) as err:
                raise SNMFError(f"A must be a numpy array, torch tensor or xarray DataArray, got {type(A).__name__}") from err
            _check_dtype(arr.dtype, type(A).__name__)
            t = torch.from_numpy(np.ascontiguousarray(arr))

        def read(start: int, stop: int) -> torch.Tensor:
            return t[:, start:stop]

        shape, source_device = tuple(int(s) for s in t.shape), t.device
    if len(shape) != 2:
        raise SNMFError(f"A must be 2-D [units, samples], got shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise SNMFError(f"A must be non-empty, got shape {shape}")
    device = source_device if device is None else resolve_device(device, SNMFError, "semi-NMF")
    if dtype is None:
        dtype = torch.float32 if device.type == "cuda" else torch.float64
    if dtype not in (torch.float32, torch.float64):
        raise SNMFError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return SampleBlocks(read, shape[0], shape[1], dtype, device, in_memory=in_memory), unit_coord, prompt_coords


def _check_dtype(dtype: Any, what: str) -> None:
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise SNMFError(
            f"A must be a numpy array, torch tensor or xarray DataArray of real numbers, got {what} with dtype {dtype}"
        )


def user_G0(G0: Any, n_samples: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """Check a caller's initial G [samples, K]: finite, >= 0, no all-zero column; as ``like``'s dtype/device."""
    G = torch.as_tensor(np.asarray(G0) if not isinstance(G0, torch.Tensor) else G0.detach())
    if G.shape != (n_samples, K):
        raise SNMFError(f"init array G0 has shape {tuple(G.shape)}; expected [samples, factors] = ({n_samples}, {K})")
    G = G.to(like, copy=True)  # the fit scales its G in place; never the caller's array
    if not bool(torch.isfinite(G).all()) or bool((G < 0).any()):
        raise SNMFError("init array G0 must be finite and >= 0")
    if bool((G.sum(0) == 0).any()):
        raise SNMFError("init array G0 has an all-zero column; every factor needs some positive entries")
    return G
