"""Sharing a study: a commented study file to start from (:mod:`.starter`), the study archive of a finished run
(:mod:`.archive`: the resolved study, versions, model, data and result-array digests) and its check (:mod:`.verify`).

The workflow files themselves travel in the wheel (:mod:`mechflow.layout`)."""
