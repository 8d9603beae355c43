"""Triton kernels vs their PyTorch references: forward and every gradient.

Without CUDA the kernels run in the Triton interpreter on CPU (``TRITON_INTERPRET=1``, set by the
``triton_device`` fixture before the kernels are loaded); shapes are tiny and hit tile edges (non-multiples of the block sizes),
k = 1 and k = n_features. bf16 checks need a GPU (interpreter bf16 math is not faithful).
"""

from __future__ import annotations

import pytest
import torch

import mechflow.kernels as K

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 needs a CUDA device")


@pytest.fixture(autouse=True)
def _triton_backend(triton_device):
    with K.use_backend("triton"):
        yield


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Relative closeness: elementwise rtol, with an absolute floor of rtol * max|expected|."""
    actual, expected = actual.detach(), expected.detach().to(actual.dtype)
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30))


def _enc_inputs(B: int, D: int, F: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    W = torch.randn(D, F, generator=g) / D**0.5
    b = torch.randn(F, generator=g) * 0.1
    return [t.to(DEVICE, dtype).requires_grad_(True) for t in (x, W, b)]


def _by_index(values: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by feature index, so sets from differently ordered top-k compare elementwise."""
    order = indices.argsort(dim=-1)
    return values.gather(-1, order), indices.gather(-1, order)


ENC_CASES = [  # B, D, F, k, n_chunks
    (5, 16, 40, 1, None),
    (37, 48, 100, 7, 3),
    (13, 20, 70, 70, None),  # k = n_features
    (9, 33, 97, 16, 2),
    (6, 17, 64, 20, 1),
]


@pytest.mark.parametrize(("B", "D", "F", "k", "n_chunks"), ENC_CASES)
def test_topk_encode_forward_and_grads(B, D, F, k, n_chunks):
    x, W, b = _enc_inputs(B, D, F, seed=B + F + k)
    xr, Wr, br = (t.detach().clone().requires_grad_(True) for t in (x, W, b))
    values, indices = K.topk_encode(x, W, b, k, n_chunks=n_chunks)
    values_ref, indices_ref = K.topk_encode_ref(xr, Wr, br, k)
    assert values.shape == (B, k) and indices.dtype == torch.int64
    v, i = _by_index(values, indices)
    v_ref, i_ref = _by_index(values_ref, indices_ref)
    assert torch.equal(i, i_ref)
    _close(v, v_ref)
    # triton output is sorted descending by value
    assert bool((values[:, :-1] >= values[:, 1:]).all())
    # order-invariant loss: weight each selected latent by a fixed random matrix R[b, feature]
    R = torch.randn(B, F, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (values * R.gather(1, indices)).sum().backward()
    (values_ref * R.gather(1, indices_ref)).sum().backward()
    for got, want in ((x.grad, xr.grad), (W.grad, Wr.grad), (b.grad, br.grad)):
        _close(got, want)


@pytest.mark.parametrize(("B", "D", "F", "k"), [(11, 24, 50, 1), (23, 40, 90, 9), (7, 19, 45, 45)])
def test_sparse_decode_forward_and_grads(B, D, F, k):
    g = torch.Generator().manual_seed(B * k)
    values = torch.randn(B, k, generator=g).relu().to(DEVICE).requires_grad_(True)
    indices = torch.stack([torch.randperm(F, generator=g)[:k] for _ in range(B)]).to(DEVICE)
    W_dec = torch.randn(F, D, generator=g).to(DEVICE).requires_grad_(True)
    b_dec = torch.randn(D, generator=g).to(DEVICE).requires_grad_(True)
    ref = [t.detach().clone().requires_grad_(True) for t in (values, W_dec, b_dec)]
    out = K.sparse_decode(values, indices, W_dec, b_dec)
    out_ref = K.sparse_decode_ref(ref[0], indices, ref[1], ref[2])
    _close(out, out_ref)
    grad_out = torch.randn(B, D, generator=g).to(DEVICE)
    out.backward(grad_out)
    out_ref.backward(grad_out)
    for got, want in zip((values.grad, W_dec.grad, b_dec.grad), (r.grad for r in ref)):
        _close(got, want)


def test_topk_sae_reconstruction_loss_matches_reference():
    """Encode -> decode -> MSE, the TopK SAE forward: loss and all five parameter gradients."""
    B, D, F, k = 21, 36, 83, 5
    x, W_enc, b_enc = _enc_inputs(B, D, F, seed=3)
    g = torch.Generator().manual_seed(4)
    W_dec = (torch.randn(F, D, generator=g) / F**0.5).to(DEVICE).requires_grad_(True)
    b_dec = torch.randn(D, generator=g).to(DEVICE).requires_grad_(True)
    params = [x, W_enc, b_enc, W_dec, b_dec]
    params_ref = [p.detach().clone().requires_grad_(True) for p in params]

    def loss(enc, dec, p):
        xc = p[0] - p[4]
        values, indices = enc(xc, p[1], p[2], k)
        return (dec(values, indices, p[3], p[4]) - p[0]).pow(2).sum(-1).mean()

    lo = loss(K.topk_encode, K.sparse_decode, params)
    lo_ref = loss(K.topk_encode_ref, K.sparse_decode_ref, params_ref)
    _close(lo, lo_ref)
    lo.backward()
    lo_ref.backward()
    for got, want in zip(params, params_ref):
        _close(got.grad, want.grad)


@pytest.mark.parametrize(("n_allowed", "k"), [(12, 4), (12, 12), (1, 1)])
def test_topk_encode_masked_for_auxk(n_allowed, k):
    B, D, F = 10, 18, 60
    x, W, b = _enc_inputs(B, D, F, seed=n_allowed)
    mask = torch.zeros(F, dtype=torch.bool)
    mask[torch.randperm(F, generator=torch.Generator().manual_seed(7))[:n_allowed]] = True
    mask = mask.to(DEVICE)
    xr, Wr, br = (t.detach().clone().requires_grad_(True) for t in (x, W, b))
    values, indices = K.topk_encode_masked(x, W, b, k, mask, n_chunks=2)
    values_ref, indices_ref = K.topk_encode_masked_ref(xr, Wr, br, k, mask)
    assert bool(mask[indices].all())
    v, i = _by_index(values, indices)
    v_ref, i_ref = _by_index(values_ref, indices_ref)
    assert torch.equal(i, i_ref)
    _close(v, v_ref)
    values.sum().backward()
    values_ref.sum().backward()
    for got, want in ((x.grad, xr.grad), (W.grad, Wr.grad), (b.grad, br.grad)):
        _close(got, want)
    with pytest.raises(ValueError, match="exceeds"):
        K.topk_encode_masked(x, W, b, n_allowed + 1, mask)


def test_topk_ties_break_to_lowest_index_deterministically():
    B, D, F, k = 4, 16, 48, 3
    # small integers: every sum is exact, so all latents (identical columns) tie exactly
    x = torch.randint(-3, 4, (B, D), generator=torch.Generator().manual_seed(0)).float().to(DEVICE)
    col = torch.randint(-3, 4, (D, 1), generator=torch.Generator().manual_seed(1)).float().to(DEVICE)
    W = torch.zeros((D, F), device=DEVICE) + col
    b = torch.zeros(F, device=DEVICE)
    runs = [K.topk_encode(x, W, b, k, n_chunks=n) for n in (None, 1, 3)]
    for values, indices in runs:
        assert torch.equal(indices, torch.arange(k, device=DEVICE).expand(B, k))
        assert torch.equal(values, runs[0][0])


def test_topk_leading_dims_and_relu_zeroes():
    x, W, b = (t.detach() for t in _enc_inputs(12, 16, 40, seed=9))
    b = b - 5.0  # most pre-activations negative: ReLU zeroes part of the top-k
    values, indices = K.topk_encode(x.reshape(3, 4, 16), W, b, 6)
    values_ref, indices_ref = K.topk_encode_ref(x, W, b, 6)
    assert values.shape == (3, 4, 6)
    v, i = _by_index(values.reshape(12, 6), indices.reshape(12, 6))
    v_ref, i_ref = _by_index(values_ref, indices_ref)
    assert torch.equal(i, i_ref) and bool((v == 0).any())
    _close(v, v_ref)


@pytest.mark.parametrize(("n", "K_"), [(37, 20), (5, 1), (70, 33)])
def test_snmf_update_matches_reference(n, K_):
    g = torch.Generator().manual_seed(n + K_)
    A = torch.randn(n + 3, n, generator=g)
    F_ = torch.randn(n + 3, K_, generator=g)
    P, Q = (A.T @ F_).to(DEVICE), (F_.T @ F_).to(DEVICE)
    G = torch.rand(n, K_, generator=g).to(DEVICE)
    _close(K.snmf_update_g(P, Q, G), K.snmf_update_g_ref(P, Q, G))
    assert bool((K.snmf_update_g(P, Q, G, eps=0.5) >= 0).all())


def test_backend_switch_and_resolution(monkeypatch):
    cpu = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        K.set_backend("cuda")
    assert K.get_backend() == "triton"
    with K.use_backend("reference"):
        assert K.backend_for(cpu) == "reference"
    with K.use_backend("auto"):
        assert K.backend_for(cpu) == "reference"  # auto never runs the interpreter
    assert K.get_backend() == "triton"
    assert K.backend_for(torch.zeros(2, device=DEVICE)) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        K.backend_for(cpu)
    with K.use_backend("reference"):  # the reference still works everywhere
        x, W, b = (t.detach().cpu() for t in _enc_inputs(3, 16, 20, seed=0))
        assert K.topk_encode(x, W, b, 2)[0].shape == (3, 2)


def test_invalid_inputs_raise_value_error():
    x, W, b = (t.detach() for t in _enc_inputs(3, 16, 20, seed=0))
    for bad_k in (0, 21):
        with pytest.raises(ValueError, match="k must be"):
            K.topk_encode(x, W, b, bad_k)
    with pytest.raises(ValueError, match="shape mismatch"):
        K.topk_encode(x, W.T, b, 2)
    with pytest.raises(ValueError, match="values/indices"):
        K.sparse_decode(torch.ones(3, 2), torch.zeros(3, 3, dtype=torch.long), W.T, torch.zeros(16))
    with pytest.raises(ValueError, match="expected P"):
        K.snmf_update_g(torch.ones(4, 3), torch.ones(4, 4), torch.ones(4, 3))


@cuda_only
def test_bf16_encode_decode_within_2e_2():
    B, D, F, k = 64, 96, 300, 8
    x, W_enc, b_enc = _enc_inputs(B, D, F, seed=5, dtype=torch.bfloat16)
    W_dec = (torch.randn(F, D) / F**0.5).to(DEVICE, torch.bfloat16).requires_grad_(True)
    b_dec = torch.zeros(D, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    params = [x, W_enc, b_enc, W_dec, b_dec]
    params_ref = [p.detach().float().requires_grad_(True) for p in params]
    values, indices = K.topk_encode(x, W_enc, b_enc, k)
    recon = K.sparse_decode(values, indices, W_dec, b_dec)
    vr, ir = K.topk_encode_ref(*params_ref[:3], k)
    recon_ref = K.sparse_decode_ref(vr, ir, params_ref[3], params_ref[4])
    _close(recon.float(), recon_ref, rtol=2e-2)
    recon.float().pow(2).sum().backward()
    recon_ref.pow(2).sum().backward()
    for got, want in zip(params, params_ref):
        _close(got.grad.float(), want.grad, rtol=2e-2)
    P, Q, G = torch.randn(50, 20), torch.randn(20, 20), torch.rand(50, 20)
    got = K.snmf_update_g(*(t.to(DEVICE, torch.bfloat16) for t in (P, Q, G)))
    _close(got.float(), K.snmf_update_g_ref(*(t.to(DEVICE) for t in (P, Q, G))), rtol=2e-2)
