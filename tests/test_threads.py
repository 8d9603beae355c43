"""mechflow.kernels.threads: a fixed intra-op thread count, and products in fixed row blocks."""

from __future__ import annotations

import pytest
import torch

from mechflow.kernels.threads import RowBlockMatmul, torch_threads


def test_torch_threads_sets_and_restores(threads):
    threads(2)
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == 2
    with torch_threads(None):
        assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match=">= 1"), torch_threads(0):
        pass


def test_row_block_products_do_not_depend_on_the_worker_count(threads):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(700, 1500, generator=g, dtype=torch.float64)
    b = torch.randn(1500, 40, generator=g, dtype=torch.float64)
    threads(1)
    outs = []
    for workers in (1, 2, 3):
        with RowBlockMatmul(workers, block_rows=128) as mm:
            outs.append(mm(a, b))
            assert torch.equal(mm(a.T[:100], a[:, :7]), a.T[:100] @ a[:, :7])  # one block: a plain product
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    torch.testing.assert_close(outs[0], a @ b, rtol=1e-12, atol=1e-10)
    with pytest.raises(ValueError, match="expected a"):
        RowBlockMatmul()(a, a)
