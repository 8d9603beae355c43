"""Input coercion and checks of a semi-NMF fit: the matrix A, the sparsity rule, a caller's G0."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import xarray as xr

from mechflow.runconfig import check_field
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


def as_matrix(
    A: Any, dtype: torch.dtype | None, device: str | torch.device | None
) -> tuple[torch.Tensor, np.ndarray | None, dict[str, np.ndarray]]:
    """A (numpy, torch or xarray) -> float tensor [units, samples], unit labels, prompt coords.

    A DataArray with a ``unit`` dim is transposed to (unit, other); its unit labels and 1-D
    coordinates along the sample dim (renamed ``prompt``) are returned. dtype defaults to float64
    on CPU, float32 on CUDA.
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
            A = A.transpose(UNIT_DIM, sample_dim)
        unit_dim, sample_dim = A.dims
        if unit_dim in A.coords:
            unit_coord = np.asarray(A[unit_dim].values)
        prompt_coords = {
            (SAMPLE_DIM if k == sample_dim else str(k)): np.asarray(v.values)
            for k, v in A.coords.items()
            if v.dims == (sample_dim,)
        }
        A = A.values
    if isinstance(A, torch.Tensor):
        t = A.detach()
    else:
        try:
            arr = np.asarray(A)
        except (TypeError, ValueError) as err:
            raise SNMFError(f"A must be a numpy array, torch tensor or xarray DataArray, got {type(A).__name__}") from err
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise SNMFError(
                f"A must be a numpy array, torch tensor or xarray DataArray of real numbers, got {type(A).__name__} "
                f"with dtype {arr.dtype}"
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim != 2:
        raise SNMFError(f"A must be 2-D [units, samples], got shape {tuple(t.shape)}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise SNMFError(f"A must be non-empty, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise SNMFError("A must be real, got a complex tensor")
    if device is None:
        device = t.device
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cuda" else torch.float64
    if dtype not in (torch.float32, torch.float64):
        raise SNMFError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    t = t.to(device=device, dtype=dtype)
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise SNMFError(f"A holds {bad} non-finite values (NaN or inf); clean or drop them before fitting")
    return t, unit_coord, prompt_coords


def user_G0(G0: Any, n_samples: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """Check a caller's initial G [samples, K]: finite, >= 0, no all-zero column; as ``like``'s dtype/device."""
    G = torch.as_tensor(np.asarray(G0) if not isinstance(G0, torch.Tensor) else G0.detach())
    if G.shape != (n_samples, K):
        raise SNMFError(f"init array G0 has shape {tuple(G.shape)}; expected [samples, factors] = ({n_samples}, {K})")
    G = G.to(like)
    if not bool(torch.isfinite(G).all()) or bool((G < 0).any()):
        raise SNMFError("init array G0 must be finite and >= 0")
    if bool((G.sum(0) == 0).any()):
        raise SNMFError("init array G0 has an all-zero column; every factor needs some positive entries")
    return G
