"""The Triton kernels compile for real GPUs (sm_80: A100, sm_90: H100) on this CPU-only machine.

``triton.compile`` with a ``GPUTarget`` and Triton's bundled ptxas lowers each kernel all the way to a
cubin without a GPU (:mod:`mechflow.kernels.aot`), so a kernel that runs only in the interpreter fails
here. CI compiles every kernel at its smallest block sizes and at its largest where that compiles in
seconds; the slow variant compiles every configuration the launchers can choose. Each compiled kernel
must be launchable: registers and shared memory per block within the GPU's limits.
"""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' or '.[gpu]' installs it)")

from conftest import load_triton_compiled  # noqa: E402

from mechflow.kernels import aot  # noqa: E402  (imports triton)
from mechflow.kernels.limits import MAX_TRITON_K  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _jit_kernels():
    """JIT (not interpreted) kernels, whatever test module ran before (tests/test_kernels.py loads them interpreted)."""
    load_triton_compiled()

#: configs whose compile takes minutes on 2 CPU cores (benchmarks/results/triton_aot.json: the bitonic
#: networks of the top-k kernels grow as log^2 of the padded k): left to the slow variant
_MINUTES = {("_topk_candidates_kernel", "KP", 128), ("_topk_select_kernel", "KP", 128)}


def _costly(config: aot.Config) -> bool:
    consts = dict(config.constants)
    return any(config.kernel == kernel and consts.get(key, 0) >= at for kernel, key, at in _MINUTES)


EXTREMES = [c for c in aot.launch_configs(extremes_only=True) if not _costly(c)]
ALL = aot.launch_configs()


def _check(config: aot.Config, arch: int) -> None:
    compiled = aot.compile_config(config, arch)
    checks = compiled.checks()
    limits = aot.LIMITS[arch]
    assert compiled.registers <= limits.regs_per_thread and checks["launchable"], (config.name, arch, compiled)
    assert 0 < checks["blocks_per_sm"]["resident"] <= limits.blocks_per_sm


def test_ci_covers_every_kernel_at_its_smallest_blocks():
    assert {c.kernel for c in EXTREMES} == set(aot.KERNELS)
    smallest = {c.kernel: c for c in reversed(aot.launch_configs(extremes_only=True))}
    assert {c.name for c in smallest.values()} <= {c.name for c in EXTREMES}  # by name: _jit_kernels reloads aot
    # the launchers' own choices: the largest k the dispatch sends to Triton (MAX_TRITON_K) pads to 256 (that
    # compile takes minutes: the slow variant's)
    topk = [dict(c.constants)["KP"] for c in aot.launch_configs(extremes_only=True) if c.kernel == "_topk_candidates_kernel"]
    assert topk == [16, MAX_TRITON_K] and MAX_TRITON_K == 256


#: CI compiles the extremes for the newest architecture (sm_90, the H100 this project is lent); sm_80 is the slow
#: variant's, as every other launch config (make test must stay near 20 min on 2 cores)
CI_ARCHS = [arch if arch == max(aot.ARCHS) else pytest.param(arch, marks=pytest.mark.slow) for arch in aot.ARCHS]


@pytest.mark.parametrize("arch", CI_ARCHS)
@pytest.mark.parametrize("config", EXTREMES, ids=lambda c: c.name)
def test_kernel_compiles_for_gpu(config, arch):
    _check(config, arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", aot.ARCHS)
@pytest.mark.parametrize("config", [c for c in ALL if c not in EXTREMES], ids=lambda c: c.name)
def test_every_launch_config_compiles_for_gpu(config, arch):
    _check(config, arch)
