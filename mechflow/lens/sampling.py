"""Sampled reasoning paths for consistency-weighted voting (Xie et al. 2024, SC+IC).

Each question's stem (the few-shot prompt up to its options) is continued after ``Reasoning:`` by
temperature / nucleus sampling (``model.generate``, left-padded batches, seeded); the path is cut at
its first line break and the answer is then read after ``\\nAnswer:`` like the greedy prompt's
(:func:`path_texts`). Each path gets the final answer and internal consistency of its own read-out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mechflow.lens.unembed import LensError

__all__ = ["REASONING_CUE", "sample_paths", "path_texts"]

#: what follows the options before a sampled path
REASONING_CUE = "Reasoning:"


@torch.inference_mode()
def sample_paths(model: nn.Module, tokenizer, stems: Sequence[str], n_samples: int, *, max_new_tokens: int = 32,
                 temperature: float = 0.7, top_p: float = 0.95, seed: int = 0, batch_size: int = 16) -> list[list[str]]:
    """``n_samples`` sampled continuations of ``stem + "Reasoning:"`` per stem ``[P][S]`` (first line only, stripped)."""
    if n_samples < 1:
        raise LensError(f"n_samples must be >= 1, got {n_samples}")
    device = next(model.parameters()).device
    prompts = [s + REASONING_CUE for s in stems for _ in range(n_samples)]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
            gen = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += [t.split("\n")[0].strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return [out[i * n_samples : (i + 1) * n_samples] for i in range(len(stems))]


def path_texts(stems: Sequence[str], paths: Sequence[Sequence[str]]) -> list[str]:
    """The prompts read for the sampled paths, prompt-major: ``stem + "Reasoning: " + path + "\\nAnswer:"``."""
    return [f"{stem}{REASONING_CUE} {p}\nAnswer:" for stem, ps in zip(stems, paths) for p in ps]
