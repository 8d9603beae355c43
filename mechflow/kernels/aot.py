"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, on any machine (no GPU, no driver).

``triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32))`` runs
the whole of Triton's pipeline (TTIR, TTGIR, LLVM IR, PTX, then the ``ptxas`` bundled with Triton to a
cubin) for a chosen GPU architecture without touching a device: a kernel that only runs in the
interpreter fails here. :func:`launch_configs` lists every configuration the launchers of
:mod:`mechflow.kernels._triton_kernels` can choose (their block-size functions over every problem size,
at the base flags), plus the flag and dtype variants at each kernel's smallest blocks;
:func:`compile_config` compiles one for ``sm_80`` (A100) or ``sm_90`` (H100) and returns what ptxas
reports: registers per thread, spill stores and loads, stack frame, and the shared memory Triton
launches the kernel with, with :data:`LIMITS` to hold them against.

Importing this module imports ``triton``. The signatures are those of contiguous tensors, as the JIT
specialises them: pointers 16-byte aligned, every unit stride a constant 1, other integers i32.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from dataclasses import dataclass, field
from typing import Any

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mechflow.kernels import _triton_kernels as tk
from mechflow.kernels.limits import MAX_TRITON_K as _MAX_TRITON_K

__all__ = ["ARCHS", "LIMITS", "Config", "GPULimits", "compile_config", "launch_configs", "report"]

ARCHS = (80, 90)


@dataclass(frozen=True)
class GPULimits:
    """Per-thread, per-block and per-SM limits of a compute capability (CUDA C Programming Guide,
    "Technical Specifications per Compute Capability"); shared memory in bytes, the opt-in maximum."""

    gpu: str
    arch: int
    regs_per_thread: int = 255
    regs_per_block: int = 65536
    regs_per_sm: int = 65536
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    shared_per_block: int = 0
    shared_per_sm: int = 0


LIMITS = {
    80: GPULimits("A100", 80, shared_per_block=163 * 1024, shared_per_sm=164 * 1024),
    90: GPULimits("H100", 90, shared_per_block=227 * 1024, shared_per_sm=228 * 1024),
}

#: (pointer argument -> element type, unit-stride arguments) of each kernel, for contiguous tensors;
#: ``{f}`` is the floating dtype of the launch, ``{m}`` the mask's (int8, or int64 where the launcher
#: passes the candidates buffer in its place)
_ARGS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "_topk_candidates_kernel": ({"x_ptr": "{f}", "w_ptr": "{f}", "b_ptr": "{f}", "mask_ptr": "{m}", "cand_ptr": "i64"},
                                ("sxd", "swf", "sbf")),
    "_topk_select_kernel": ({"cand_ptr": "i64", "val_ptr": "{f}", "idx_ptr": "i64"}, ("svk", "sik")),
    "_gather_sum_kernel": ({"coef_ptr": "{f}", "idx_ptr": "i64", "w_ptr": "{f}", "bias_ptr": "{f}", "out_ptr": "{f}"},
                           ("sck", "sik", "swd", "sod")),
    "_gather_dot_kernel": ({"g_ptr": "{f}", "idx_ptr": "i64", "w_ptr": "{f}", "out_ptr": "{f}"}, ("sgd", "sik", "swd", "sok")),
    "_segment_sum_kernel": ({"order_ptr": "i64", "offsets_ptr": "i64", "coef_ptr": "{f}", "src_ptr": "{f}",
                             "out_ptr": "{f}", "bias_out_ptr": "{f}"}, ("sck", "ssd", "sod")),
    "_snmf_update_kernel": ({"p_ptr": "{f}", "q_ptr": "{f}", "g_ptr": "{f}", "out_ptr": "{f}"}, ("spk", "sqb", "sgk", "sok")),
}
KERNELS = tuple(_ARGS)
_FLOAT_ARGS = {"eps"}
_OPTIONS = ("num_warps", "num_stages")


@dataclass(frozen=True)
class Config:
    """One compilation of one kernel: its constexprs (block sizes and flags), the floating dtype of its
    tensors (``fp32`` or ``bf16``), launch options, and whether it is one of the kernel's extreme block
    configurations (its smallest or its largest, at the base flags)."""

    kernel: str
    constants: tuple[tuple[str, Any], ...]
    dtype: str = "fp32"
    options: tuple[tuple[str, int], ...] = ()
    extreme: bool = False
    variant: str = "base"

    @property
    def name(self) -> str:
        consts = ",".join(f"{k}={v}" for k, v in self.constants if k != "SENTINEL")
        return f"{self.kernel.strip('_')}[{consts},{self.dtype}]"

    def signature(self) -> tuple[dict[str, str], dict[str, Any], dict[tuple[int, ...], list]]:
        """(signature, constexprs, attrs) of :class:`triton.compiler.ASTSource` for this config."""
        fn = getattr(tk, self.kernel)
        pointers, unit = _ARGS[self.kernel]
        consts = dict(self.constants)
        mask = "i8" if consts.get("HAS_MASK") else "i64"
        sig, constexprs, attrs = {}, {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in consts:
                sig[arg], constexprs[arg] = "constexpr", consts[arg]
            elif arg in unit:
                sig[arg], constexprs[arg] = "constexpr", 1
            elif arg in pointers:
                sig[arg] = "*" + pointers[arg].format(f=self.dtype, m=mask)
                attrs[(i,)] = [["tt.divisibility", 16]]
            else:
                sig[arg] = "fp32" if arg in _FLOAT_ARGS else "i32"
        return sig, constexprs, attrs


def _blocks_over_sizes() -> dict[str, list[dict[str, int]]]:
    """Every distinct block choice of each launcher: its block-size function over every problem size
    (k in 1.._MAX_TRITON_K; widths 1..4096, past every cap), from the smallest to the largest."""
    ks, widths = range(1, _MAX_TRITON_K + 1), range(1, 4097)
    choices = {
        "_topk_candidates_kernel": [tk.topk_blocks(k) for k in ks],
        "_topk_select_kernel": [tk.topk_select_blocks(k) for k in ks],
        "_gather_sum_kernel": [tk.gather_sum_blocks(d) for d in widths],
        "_gather_dot_kernel": [tk.gather_dot_blocks(k, d) for k in (1, 16, 32, 64, _MAX_TRITON_K) for d in widths],
        "_segment_sum_kernel": [tk.segment_sum_blocks(d) for d in widths],
        "_snmf_update_kernel": [tk.snmf_blocks(k) for k in widths],
    }
    # sizes ascend, so the distinct choices come in ascending order: first the smallest, last the largest
    return {kernel: list({tuple(sorted(b.items())): b for b in blocks}.values()) for kernel, blocks in choices.items()}


def _base_flags(kernel: str) -> dict[str, Any]:
    """The flags of the plain launch: fp32 with IEEE dots (torch's default: TF32 off), no mask, with bias."""
    return {
        "_topk_candidates_kernel": {"SENTINEL": tk._SENTINEL, "HAS_MASK": False, "PRECISION": "ieee"},
        "_topk_select_kernel": {"SENTINEL": tk._SENTINEL},
        "_gather_sum_kernel": {"HAS_BIAS": True},
        "_segment_sum_kernel": {"HAS_BIAS": True},
        "_snmf_update_kernel": {"PRECISION": "ieee"},
    }.get(kernel, {})


def _variants(kernel: str, flags: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, dtype, flags) of the other launches: bf16 tensors (``tl.dot`` then takes 'tf32', which bf16
    ignores), TF32 dots on fp32 (``torch.backends.cuda.matmul.allow_tf32``), the AuxK mask, no bias."""
    out = [("bf16", "bf16", {**flags, **({"PRECISION": "tf32"} if "PRECISION" in flags else {})})]
    if "PRECISION" in flags:
        out.append(("tf32", "fp32", {**flags, "PRECISION": "tf32"}))
    if "HAS_MASK" in flags:
        out.append(("mask", "fp32", {**flags, "HAS_MASK": True}))
    if "HAS_BIAS" in flags:
        out.append(("no_bias", "fp32", {**flags, "HAS_BIAS": False}))
    return out


def launch_configs(extremes_only: bool = False) -> list[Config]:
    """Every config the launchers can choose (block sizes at the base flags), then each kernel's flag and
    dtype variants at its smallest blocks; ``extremes_only``: each kernel's smallest and largest blocks."""
    configs: list[Config] = []
    for kernel, blocks in _blocks_over_sizes().items():
        flags = _base_flags(kernel)
        for i, b in enumerate(blocks):
            extreme = i in (0, len(blocks) - 1)
            if extremes_only and not extreme:
                continue
            consts = {k: v for k, v in b.items() if k not in _OPTIONS}
            configs.append(Config(kernel, tuple(sorted({**consts, **flags}.items())), "fp32",
                                  tuple(sorted((k, v) for k, v in b.items() if k in _OPTIONS)), extreme))
        if extremes_only:
            continue
        smallest = blocks[0]
        consts = {k: v for k, v in smallest.items() if k not in _OPTIONS}
        options = tuple(sorted((k, v) for k, v in smallest.items() if k in _OPTIONS))
        for name, dtype, vflags in _variants(kernel, flags):
            configs.append(Config(kernel, tuple(sorted({**consts, **vflags}.items())), dtype, options, False, name))
    return configs


@dataclass
class Compiled:
    """What compiling one config for one architecture gave: ptxas's report, Triton's shared memory."""

    config: Config
    arch: int
    seconds: float
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    shared_bytes: int
    num_warps: int
    ptxas: str = field(repr=False, default="")

    @property
    def threads(self) -> int:
        return 32 * self.num_warps

    def checks(self) -> dict[str, Any]:
        """Against :data:`LIMITS`: launchable (registers and shared memory per block within the limits),
        blocks resident per SM by registers, by shared memory and by threads, and the occupancy."""
        lim = LIMITS[self.arch]
        regs_block = self.registers * self.threads
        by_regs = lim.regs_per_sm // max(1, regs_block)
        by_shared = lim.shared_per_sm // self.shared_bytes if self.shared_bytes else lim.blocks_per_sm
        by_threads = lim.threads_per_sm // self.threads
        blocks = min(by_regs, by_shared, by_threads, lim.blocks_per_sm)
        return {
            "launchable": self.registers <= lim.regs_per_thread and regs_block <= lim.regs_per_block
            and self.shared_bytes <= lim.shared_per_block,
            "spills": self.spill_stores > 0 or self.spill_loads > 0,
            "registers_per_block": regs_block,
            "blocks_per_sm": {"registers": by_regs, "shared": by_shared, "threads": by_threads, "resident": blocks},
            "occupancy": round(blocks * self.threads / lim.threads_per_sm, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.config.kernel, "config": self.config.name, "variant": self.config.variant,
                "constexprs": {k: v for k, v in self.config.constants if k != "SENTINEL"}, "dtype": self.config.dtype,
                "num_warps": self.num_warps, "threads_per_block": self.threads, "registers_per_thread": self.registers,
                "spill_stores_bytes": self.spill_stores, "spill_loads_bytes": self.spill_loads,
                "stack_frame_bytes": self.stack_bytes, "shared_bytes": self.shared_bytes,
                "compile_s": round(self.seconds, 2), **self.checks()}


_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_config(config: Config, arch: int) -> Compiled:
    """Compile ``config`` for ``sm_<arch>`` (80 or 90) with Triton's bundled ptxas; raises what Triton
    raises where the kernel does not lower (e.g. a construct only the interpreter accepts)."""
    if arch not in LIMITS:
        raise ValueError(f"arch must be one of {sorted(LIMITS)}, got {arch!r}")
    sig, constexprs, attrs = config.signature()
    options = dict(config.options)
    log = io.StringIO()
    t = time.perf_counter()
    # always compile (a cached kernel runs no ptxas, so it would report nothing) and capture ptxas -v
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        kernel = triton.compile(ASTSource(getattr(tk, config.kernel), sig, constexprs, attrs),
                                target=GPUTarget("cuda", arch, 32), options=options)
    seconds = time.perf_counter() - t
    text = log.getvalue()
    regs, spill = _REGS.search(text), _SPILL.search(text)
    if regs is None or spill is None:
        raise RuntimeError(f"no ptxas report for {config.name} on sm_{arch}:\n{text[-2000:]}")
    return Compiled(config, arch, seconds, int(regs.group(1)), int(spill.group(2)), int(spill.group(3)),
                    int(spill.group(1)), int(kernel.metadata.shared), int(kernel.metadata.num_warps), text)


def report(configs: list[Config], archs: tuple[int, ...] = ARCHS, progress: Any = None) -> dict[str, Any]:
    """Compile every config for every arch: {"limits", "kernels": [one entry per config and arch]}."""
    rows = []
    for config in configs:
        for arch in archs:
            row = {"arch": f"sm_{arch}", "gpu": LIMITS[arch].gpu, **compile_config(config, arch).to_dict()}
            rows.append(row)
            if progress is not None:
                progress(row)
    return {"triton": triton.__version__,
            "limits": {f"sm_{a}": vars(LIMITS[a]) for a in archs},
            "kernels": rows}
