"""The feature explorer: a static, offline site per feature set, and a live prompt explorer.

- :mod:`~mechflow.explorer.sets`: a feature set (SAE run, semi-NMF run, a hook's raw units) as pooled values
  [prompt, feature], a token encoder and decoder directions (:class:`FeatureSet`);
- :mod:`~mechflow.explorer.tokens`: every token of the prompts encoded, top contexts, histograms, density;
- :mod:`~mechflow.explorer.corpus`: top contexts from a text corpus's held-out windows (SAEs trained on a corpus),
  streamed over the held-out token-activation shards;
- :mod:`~mechflow.explorer.directions`: nearest features by decoder cosine, promoted / suppressed tokens
  (a decoder direction through the final norm's scale and the unembedding);
- :mod:`~mechflow.explorer.site`: the static site (index table, lazily loaded feature chunks, vendored assets);
- :mod:`~mechflow.explorer.build`: :func:`build_explorer`, the ``explorer`` rule's entry point;
- :mod:`~mechflow.explorer.live`, :mod:`~mechflow.explorer.server`: ``mechflow explore`` (Starlette on 127.0.0.1).

Nothing is imported here, so the study core can name the package without loading torch.
"""
