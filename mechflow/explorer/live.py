"""The live prompt explorer's computations: any text through a model, one feature set's per-token values, the top
features at each token, and the next-token distribution with a feature's direction added (the steering hook).

:class:`LiveSession` holds the study's feature sets (by id, ``dataset/model/hook/layer<L>/<source>``, as their
explorer folders) and loads each model and set on first use. Bad requests raise :class:`RequestError` (its
``status`` is the HTTP status the server answers with); nothing is left half-loaded after one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mechflow.explorer.sets import FeatureSet, load_set

__all__ = ["RequestError", "SetSpec", "LiveSession", "MAX_TEXT_BYTES"]

#: the longest request text accepted before tokenising (bytes of UTF-8)
MAX_TEXT_BYTES = 100_000


class RequestError(ValueError):
    """A request the session cannot answer: ``status`` 400 (bad input), 404 (unknown set), 413 (text too long)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SetSpec:
    """Where one feature set lives: its files and the model it reads (``model_params``: the study's settings)."""

    id: str
    source: str
    model: str
    hook: str
    layer: int
    features: str
    sae_dir: str | None
    model_params: Mapping[str, Any]
    causal: bool


class LiveSession:
    """The models and feature sets of a study, loaded on first use; one request at a time (a lock: a model's
    forward pass is not thread-safe)."""

    def __init__(self, specs: Sequence[SetSpec], top_features: int = 5, top_tokens: int = 10):
        self.specs = {s.id: s for s in specs}
        self.top_features, self.top_tokens = top_features, top_tokens
        self._models: dict[str, tuple[Any, Any, Any]] = {}
        self._sets: dict[str, FeatureSet] = {}
        self._lock = threading.Lock()

    # ---- loading ----------------------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """Every set the session can serve: id, source, model, hook, layer, causal (steerable)."""
        return [{"id": s.id, "source": s.source, "model": s.model, "hook": s.hook, "layer": s.layer, "causal": s.causal,
                 "available": Path(s.features).exists()} for s in self.specs.values()]

    def spec(self, set_id: Any) -> SetSpec:
        if not isinstance(set_id, str) or set_id not in self.specs:
            raise RequestError(f"unknown feature set {set_id!r}; known: {sorted(self.specs)}", 404)
        spec = self.specs[set_id]
        if not Path(spec.features).exists():
            raise RequestError(f"feature set {set_id!r} is not built yet ({spec.features} is missing): run the study first", 404)
        return spec

    def _model(self, spec: SetSpec) -> tuple[Any, Any, Any]:
        if spec.model not in self._models:
            if spec.causal:
                from mechflow.lens.model import load_causal_lm

                model, tokenizer, unembed, _ = load_causal_lm(spec.model_params)
            else:
                from mechflow.models import load_model, resolve_model

                model, tokenizer = load_model(resolve_model(spec.model_params["spec"]), spec.model_params.get("device", "auto"),
                                              spec.model_params.get("dtype", "float32"))
                unembed = None
            model.requires_grad_(False)
            self._models[spec.model] = (model, tokenizer, unembed)
        return self._models[spec.model]

    def _set(self, spec: SetSpec) -> FeatureSet:
        if spec.id not in self._sets:
            self._sets[spec.id] = load_set(spec.source, spec.features, spec.layer, spec.sae_dir)
        return self._sets[spec.id]

    # ---- requests ---------------------------------------------------------------------------------------
    @staticmethod
    def _text(text: Any) -> str:
        if not isinstance(text, str) or not text.strip():
            raise RequestError("give some text (a non-empty string)")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
            raise RequestError(f"text over {MAX_TEXT_BYTES} bytes", 413)
        return text

    def _feature(self, fs: FeatureSet, feature: Any) -> int:
        if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < fs.n_features:
            raise RequestError(f"unknown feature {feature!r}: this set has features 0..{fs.n_features - 1}")
        return feature

    def _encode(self, spec: SetSpec, text: str):
        import torch

        model, tokenizer, _ = self._model(spec)
        enc = tokenizer(text, return_tensors="pt")
        n = int(enc["input_ids"].shape[1])
        limit = int(getattr(model.config, "max_position_embeddings", 0) or getattr(model.config, "n_positions", 0) or 0)
        if limit and n > limit:
            raise RequestError(f"the text is {n} tokens, over the model's length ({limit} tokens)", 413)
        device = next(model.parameters()).device
        return {k: v.to(device) for k, v in enc.items() if isinstance(v, torch.Tensor)}, n

    def activations(self, set_id: Any, text: Any, feature: Any = None) -> dict[str, Any]:
        """Per-token values of the set for ``text``: tokens, the top features at each token, and (``feature``) its
        value at each token. Position 0 is flagged as the sink (left out of the top features)."""
        import torch

        from mechflow.extract.capture import capturing

        spec, text = self.spec(set_id), self._text(text)
        with self._lock:
            fs = self._set(spec)
            if feature is not None:
                feature = self._feature(fs, feature)
            model, tokenizer, _ = self._model(spec)
            inputs, n = self._encode(spec, text)
            with torch.inference_mode(), capturing(model, {spec.hook: [spec.layer]}) as capture:
                acts = capture(inputs)[(spec.hook, spec.layer)][0].float().cpu().numpy()
            values = fs.encode(acts)  # [tokens, features]
        ids = inputs["input_ids"][0].tolist()
        tokens = [tokenizer.decode([i]) for i in ids]
        k = min(self.top_features, fs.n_features)
        top = np.argsort(-values, axis=1, kind="stable")[:, :k]
        out = {"set": spec.id, "tokens": tokens, "sink": [0],
               "top": [[[int(f), round(float(values[t, f]), 4)] for f in top[t] if values[t, f] > 0 or fs.kind == "units"]
                       for t in range(n)],
               "max": float(values[1:].max()) if n > 1 else float(values.max())}
        if feature is not None:
            out["feature"] = feature
            out["values"] = [round(float(v), 4) for v in values[:, feature]]
        return out

    def steer(self, set_id: Any, text: Any, feature: Any, scale: Any) -> dict[str, Any]:
        """The next-token distribution after ``text`` without and with feature ``feature``'s unit direction added at
        every position at the set's hook and layer, ``scale`` times the mean activation norm of the text's tokens
        (the steering step's hook, :func:`mechflow.steering.hook.steering`); top tokens and the KL between them."""
        import torch

        from mechflow.extract.capture import capturing
        from mechflow.steering.hook import steering

        spec, text = self.spec(set_id), self._text(text)
        if not spec.causal:
            raise RequestError(f"feature set {set_id!r} reads an encoder: there is no next token to steer")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale) or abs(scale) > 100:
            raise RequestError(f"scale must be a number in [-100, 100], got {scale!r}")
        with self._lock:
            fs = self._set(spec)
            feature = self._feature(fs, feature)
            model, tokenizer, _ = self._model(spec)
            inputs, _ = self._encode(spec, text)
            if fs.directions is None:
                direction = torch.zeros(fs.n_features)
                direction[feature] = 1.0
            else:
                direction = torch.as_tensor(fs.directions[feature], dtype=torch.float32)
            direction = direction / direction.norm().clamp_min(1e-12)
            with torch.inference_mode():
                with capturing(model, {spec.hook: [spec.layer]}) as capture:
                    norm = float(capture(inputs)[(spec.hook, spec.layer)][0, 1:].float().norm(dim=-1).mean()) if \
                        inputs["input_ids"].shape[1] > 1 else 1.0
                clean = model(**inputs).logits[0, -1].float().log_softmax(-1)
                with steering(model, spec.hook, spec.layer, direction, coef=float(scale) * norm):
                    steered = model(**inputs).logits[0, -1].float().log_softmax(-1)
        kl = float((clean.exp() * (clean - steered)).sum())

        def top(lp: Any) -> list[list[Any]]:
            v, i = lp.topk(self.top_tokens)
            return [[tokenizer.decode([int(t)]), round(float(p), 5)] for t, p in zip(i, v.exp())]

        return {"set": spec.id, "feature": feature, "scale": float(scale), "added_norm": float(abs(scale) * norm),
                "clean": top(clean), "steered": top(steered), "kl": kl}
