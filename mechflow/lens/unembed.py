"""The read-out head of a causal LM: its final norm and unembedding, found once per architecture.

The logit lens (nostalgebraist 2020) decodes the residual stream ``h`` of any layer as the model
decodes its last one: ``logits = W_U norm(h) (+ b_U)``. :func:`find_unembedding` locates ``norm``
(the final RMSNorm / LayerNorm that follows the last block) and ``W_U`` (the output embedding,
tied or not) on Hugging Face causal LMs: Llama, Mistral, Qwen, Gemma (``model.norm``), GPT-2 and
Falcon (``transformer.ln_f``), GPT-NeoX / Pythia (``gpt_neox.final_layer_norm``), OPT
(``model.decoder.final_layer_norm``), Phi (``model.final_layernorm``). Gemma 2's final logit
soft-capping is carried along.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mechflow.lens.errors import LensError

__all__ = ["LensError", "Unembedding", "find_unembedding", "FINAL_NORMS"]

#: where the final norm lives, relative to the model with its LM head, by architecture family
FINAL_NORMS: tuple[str, ...] = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                                "model.decoder.final_layer_norm", "model.final_layernorm", "transformer.norm_f",
                                "model.final_norm", "norm")


@dataclass(frozen=True)
class Unembedding:
    """The decoder of the residual stream: ``logits = softcap(weight @ norm(h) + bias)``.

    norm: the model's final norm module (applied over the last dim of any ``[..., d]`` tensor);
    weight: ``[vocab, d]`` float32 (a view of the model's own matrix when that is float32);
    bias: ``[vocab]`` float32 or None; softcap: Gemma 2's ``final_logit_softcapping`` or None.
    """

    norm: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[1])

    def normed(self, h: torch.Tensor) -> torch.Tensor:
        """``norm(h)`` in float32: ``[..., d]`` -> ``[..., d]``."""
        return self.norm(h.to(self.weight.dtype)).to(self.weight.dtype)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Full logits ``[..., vocab]`` of residuals ``h`` ``[..., d]`` (materialised: small inputs and tests only;
        :func:`mechflow.lens.chunked.read_vocab` reads large batches in vocabulary chunks)."""
        z = self.normed(h) @ self.weight.T
        if self.bias is not None:
            z = z + self.bias
        if self.softcap:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def find_unembedding(model: nn.Module) -> Unembedding:
    """The final norm and unembedding of a Hugging Face causal LM (loaded with its LM head).

    Raises LensError for a model without an output embedding (an encoder loaded as ``AutoModel``) or
    whose final norm is not at one of :data:`FINAL_NORMS`.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise LensError(f"{type(model).__name__} has no LM head (output embeddings): the lens reads causal LMs "
                        "(AutoModelForCausalLM); an encoder has no unembedding to read layers through")
    for path in FINAL_NORMS:
        norm = _get(model, path)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.ModuleList):
            break
    else:
        raise LensError(f"cannot find the final norm of {type(model).__name__} (looked for {FINAL_NORMS})")
    weight = head.weight.detach().float()
    bias = head.bias.detach().float() if getattr(head, "bias", None) is not None else None
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return Unembedding(norm=norm, weight=weight, bias=bias, softcap=float(softcap) if softcap else None)
