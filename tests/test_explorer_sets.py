"""``explorer.sets``: which kinds of feature set get an explorer (the default study builds only its SAE's)."""

from __future__ import annotations

import copy

import yaml
from conftest import REPO

from mechflow.resolve import resolve
from mechflow.steps.manifest import manifest


def _explorers(cfg: dict, tmp_path) -> set[str]:
    resolved = resolve(copy.deepcopy(cfg), base_dir=tmp_path, schema_path=REPO / "config.schema.yaml", data_checks=False)
    return {e["kind"] for e in manifest(resolved.study, resolved.facts)["explorer"]}


def test_explorer_sets_choose_the_kinds_of_feature_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    assert _explorers(cfg, tmp_path) == {"sae", "snmf", "units"}  # the default: every kind the spatial step tests
    cfg["explorer"] = {"sets": ["sae"]}
    assert _explorers(cfg, tmp_path) == {"sae"}
    cfg["explorer"] = {"sets": ["units", "snmf"]}
    assert _explorers(cfg, tmp_path) == {"units", "snmf"}


def test_the_default_study_explores_its_sae_only(tmp_path, monkeypatch):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    monkeypatch.chdir(REPO)
    assert _explorers(cfg, REPO) == {"sae"}
