"""Typed run configs (mechflow.runconfig): the generated schema entries of config.schema.yaml, one set of
defaults for dataclasses / schema / library signatures, one-line errors, and schema and Python validators
agreeing on good and bad runs."""

from __future__ import annotations

import inspect
from dataclasses import MISSING

import jsonschema
import numpy as np
import pytest
import torch
import yaml

from mechflow import run_schemas, runconfig, snmf
from mechflow.sae import ARCHITECTURES, CONFIGS, DEFAULT_RUN, REGISTRY, SAERunConfig, build_sae, train, validate_run
from mechflow.sae import run_schema as sae_run_schema

SAE_KEYS = ("properties", "sae", "properties", "runs", "additionalProperties")
SNMF_KEYS = ("properties", "snmf", "properties", "runs", "additionalProperties")


def _entry(keys):
    obj = yaml.safe_load(run_schemas.SCHEMA_PATH.read_text(encoding="utf-8"))
    for key in keys:
        obj = obj[key]
    return obj


# ---- (a) config.schema.yaml holds the generated entries --------------------------------------------

def test_schema_file_entries_are_the_generated_ones():
    assert _entry(SAE_KEYS) == run_schemas.generated_entries()[SAE_KEYS], "regenerate with: python -m mechflow.run_schemas"
    # the SAE run entry is the dataclasses' schema plus the run's placement keys (hook, level: not training settings)
    placed = _entry(SAE_KEYS)
    assert {k: v for k, v in placed["properties"].items() if k not in ("hook", "level")} == sae_run_schema()["properties"]
    assert [[n for n in b["then"]["propertyNames"]["enum"] if n not in ("hook", "level")] for b in placed["allOf"]] == [
        b["then"]["propertyNames"]["enum"] for b in sae_run_schema()["allOf"]]
    assert _entry(SNMF_KEYS) == snmf.run_schema(), "regenerate with: python -m mechflow.run_schemas"
    assert run_schemas.check_run_schemas() == []
    jsonschema.Draft202012Validator.check_schema(sae_run_schema())
    jsonschema.Draft202012Validator.check_schema(snmf.run_schema())


def test_regeneration_rewrites_only_its_entries(tmp_path):
    text = run_schemas.SCHEMA_PATH.read_text(encoding="utf-8")
    assert run_schemas.render_run_schemas(text) == text  # in sync: nothing to do
    stale = run_schemas.replace_yaml_entry(text, SNMF_KEYS, {"type": "object"})
    stale = run_schemas.replace_yaml_entry(stale, SAE_KEYS, {"type": "object", "required": ["arch"]})
    assert stale != text and yaml.safe_load(stale)["properties"]["snmf"]["properties"]["runs"]["additionalProperties"] == {
        "type": "object"}
    path = tmp_path / "schema.yaml"
    path.write_text(stale, encoding="utf-8")
    assert run_schemas.check_run_schemas(path) == [".".join(SAE_KEYS), ".".join(SNMF_KEYS)]
    assert run_schemas.write_run_schemas(path) is True
    assert path.read_text(encoding="utf-8") == text  # every other line (comments, order, style) as it was
    assert run_schemas.write_run_schemas(path) is False
    with pytest.raises(KeyError, match="nope"):
        run_schemas.replace_yaml_entry(text, ("properties", "nope"), {})


# ---- (b) one set of defaults ---------------------------------------------------------------------

def _schema_defaults(props):
    return {k: v["default"] for k, v in props.items() if "default" in v}


@pytest.mark.parametrize("arch", list(REGISTRY))
def test_sae_defaults_agree_everywhere(arch):
    sae_cls, cfg_cls = REGISTRY[arch]
    assert ARCHITECTURES[arch] is sae_cls and sae_cls.arch == arch and sae_cls.config_cls is cfg_cls
    options = cfg_cls.option_names()
    # the dataclass: a run of just the arch is the dataclass defaults, common keys first
    full = validate_run({"arch": arch})
    assert full == cfg_cls.defaults() and list(full)[: len(DEFAULT_RUN)] == list(DEFAULT_RUN)
    assert {k: full[k] for k in DEFAULT_RUN if k != "arch"} == {k: v for k, v in DEFAULT_RUN.items() if k != "arch"}
    # the schema: common defaults in properties, this arch's in its if/then block
    schema = sae_run_schema()
    assert _schema_defaults(schema["properties"]) == SAERunConfig.defaults()
    (block,) = [b for b in schema["allOf"] if b["if"]["properties"]["arch"]["const"] == arch]
    assert list(block["then"]["properties"]) == list(options)
    assert _schema_defaults(block["then"]["properties"]) == {k: full[k] for k in options}
    # the SAE class reads its options from the dataclass (no copy of its own)
    model = build_sae(arch, 6, 16, 4)
    assert model.opts == {k: full[k] for k in options}
    assert not hasattr(sae_cls, "options")
    # train(): its signature defaults and the run it actually trains
    params = inspect.signature(train).parameters
    for key in ("arch", "n_features", "k", "steps", "seed"):
        assert params[key].default == DEFAULT_RUN[key], key
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    trained = train(x, arch=arch, n_features=16, k=4, steps=2, batch_size=16, b_dec_init="zeros")
    assert trained.run == {**full, "n_features": 16, "k": 4, "steps": 2, "batch_size": 16, "b_dec_init": "zeros"}


def test_snmf_defaults_agree_everywhere():
    defaults = snmf.SNMFRunConfig.defaults()
    assert defaults == {"sparsity": 0.1, "init": "svd", "max_iter": 300, "tol": 1e-5, "seed": 0, "n_init": 1,
                        "ridge": 1e-6, "refit_iter": 5}  # the workflow's values, now the library's too
    schema = snmf.run_schema()
    assert _schema_defaults(schema["properties"]) == defaults and schema["required"] == ["n_factors"]
    assert snmf.DEFAULTS == defaults
    assert snmf.validate_run({"n_factors": 3}) == {"n_factors": 3, **defaults}
    A = np.random.default_rng(0).normal(size=(12, 30))
    r = snmf.fit(A, snmf.SNMFRunConfig(n_factors=3))
    assert {k: r.params[k] for k in defaults} == defaults
    assert snmf.fit(A, **snmf.validate_run({"n_factors": 3})).params == r.params  # every run key is a fit keyword


def test_every_run_key_is_typed_and_documented():
    for cls in (*CONFIGS.values(), snmf.SNMFRunConfig):
        types = runconfig.field_types(cls)
        for f in runconfig.config_fields(cls):
            assert f.metadata.get("doc"), (cls.__name__, f.name)
            assert f.name in types, (cls.__name__, f.name)
            if f.default is not MISSING:  # each default passes its own field's checks
                runconfig.check_field(cls, f.name, runconfig._plain(f.default))


# ---- (c) one-line errors naming the key ----------------------------------------------------------

SAE_BAD = [
    ({"l1_coef": 1.0}, "l1_coef", "belongs to arch ['relu']"),
    ({"arch": "relu", "stepz": 3}, "stepz", "is not a known key"),
    ({"steps": 2.5}, "steps", "must be an integer"),
    ({"n_features": True}, "n_features", "must be an integer"),
    ({"lr": "fast"}, "lr", "must be a number"),
    ({"lr": 0}, "lr", "> 0"),
    ({"warmup": 1.0}, "warmup", "< 1"),
    ({"adam_betas": [0.9]}, "adam_betas", "a list of 2 numbers"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations", "one of"),
    ({"device": "tpu"}, "device", "matching"),
    ({"arch": "jumprelu", "bandwidth": 0}, "bandwidth", "> 0"),
    ({"arch": "matryoshka", "matryoshka_prefixes": [0.5, 1.5]}, "matryoshka_prefixes", "<= 1"),
    ({"arch": "mp", "mp_steps": 0}, "mp_steps", ">= 1 or null"),
    ({"k": 9, "n_features": 8}, "k", "k=9 is larger than n_features=8"),
    ({"arch": "matryoshka", "k": 65, "n_features": 64}, "k", "larger than n_features"),
    ({"warmup": 0.6, "decay": 0.5}, "warmup", "warmup + decay"),
    ({"shuffle_window": 100, "shuffle_block": 256}, "shuffle_window", "shuffle_block"),
    ({"arch": "gba", "gba_freq_min": 0.6, "gba_freq_max": 0.5}, "gba_freq_min", "gba_freq_max"),
]
SNMF_BAD = [
    ({}, "n_factors", "is required"),
    ({"n_factors": 2, "rank": 3}, "rank", "is not a known key"),
    ({"n_factors": 2.5}, "n_factors", "must be an integer"),
    ({"n_factors": 0}, "n_factors", ">= 1"),
    ({"n_factors": 2, "sparsity": 0}, "sparsity", "> 0"),
    ({"n_factors": 2, "sparsity": 1.5}, "sparsity", "<= 1"),
    ({"n_factors": 2, "init": "nndsvd"}, "init", "one of"),
    ({"n_factors": 2, "tol": -1e-3}, "tol", ">= 0"),
    ({"n_factors": 2, "n_init": 3}, "n_init", "seeded init"),
]


def _one_line_naming(err: pytest.ExceptionInfo, key: str, text: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and f"'{key}'" in msg and text in msg, msg


@pytest.mark.parametrize(("run", "key", "text"), SAE_BAD)
def test_bad_sae_runs(run, key, text):
    with pytest.raises(ValueError) as err:
        validate_run(run)
    _one_line_naming(err, key, text)


@pytest.mark.parametrize(("run", "key", "text"), SNMF_BAD)
def test_bad_snmf_runs(run, key, text):
    with pytest.raises(snmf.SNMFError) as err:
        snmf.validate_run(run)
    _one_line_naming(err, key, text)


def test_library_entry_points_use_the_same_validator():
    with pytest.raises(ValueError, match="'l1_coef' must be a number >= 0"):
        build_sae("relu", 4, 8, l1_coef=-1.0)
    with pytest.raises(ValueError, match="k=9 is larger than n_features=8"):
        build_sae("topk", 4, 8, 9)
    with pytest.raises(ValueError, match="does not take"):
        build_sae("topk", 4, 8, 2, l1_coef=1.0)
    with pytest.raises(ValueError, match="'gba_freq_min'"):
        build_sae("gba", 4, 8, gba_freq_min=0.9, gba_freq_max=0.5)
    A = np.ones((10, 20))
    with pytest.raises(snmf.SNMFError, match="'ridge' must be a number >= 0"):
        snmf.fit(A, n_factors=2, ridge=-1.0)
    with pytest.raises(snmf.SNMFError, match="'max_iter' must be an integer >= 0"):
        snmf.fit(A, n_factors=2, max_iter=1.5)


# ---- (d) the JSON schema and the Python validator agree ------------------------------------------

SAE_GOOD = [
    {},
    {"arch": "topk", "n_features": 64, "k": 8, "lr": 1e-2, "auxk_coef": 0.125, "k_aux": None},
    {"arch": "relu", "l1_coef": 2, "l1_warmup": 0.0, "adam_betas": [0.5, 0.99]},
    {"arch": "gba", "gba_freq_max": 0.08, "gba_freq_min": 5e-3, "gba_interval": 5, "device": "cuda:1"},
    {"arch": "matryoshka", "k": 8, "matryoshka_prefixes": [0.25, 0.5], "threshold_momentum": 0.9},
    {"arch": "mp", "mp_steps": 4, "normalize_activations": "none", "b_dec_init": "zeros"},
    {"arch": "jumprelu", "l0_coef": 0.02, "k": 1},
]
#: messages of the cross-field rules JSON schema cannot state: the schema admits those runs, Python does not
SAE_CROSS_FIELD = ("larger than n_features", "warmup + decay", "shuffle_block", "gba_freq_max")


@pytest.mark.parametrize("run", SAE_GOOD)
def test_good_sae_runs_pass_both(run):
    validate_run(run)
    jsonschema.Draft202012Validator(sae_run_schema()).validate(run)
    # the filled-in run is valid too, and so is the default filling of the project's loader
    jsonschema.Draft202012Validator(sae_run_schema()).validate(validate_run(run))


@pytest.mark.parametrize(("run", "key", "text"), SAE_BAD)
def test_bad_sae_runs_fail_both(run, key, text):
    valid = jsonschema.Draft202012Validator(sae_run_schema()).is_valid(run)
    if any(rule in text for rule in SAE_CROSS_FIELD):
        assert valid  # a cross-field rule: checked in Python only, and listed in the schema's description
        assert key in sae_run_schema()["description"]
    else:
        assert not valid, run


@pytest.mark.parametrize("run", [{"n_factors": 5}, {"n_factors": 1, "init": "kmeans", "n_init": 4, "max_iter": 0.0},
                                 {"n_factors": 2, "sparsity": 1, "tol": 0, "ridge": 0.0, "refit_iter": 0}])
def test_good_snmf_runs_pass_both(run):
    snmf.validate_run(run)
    jsonschema.Draft202012Validator(snmf.run_schema()).validate(run)


@pytest.mark.parametrize(("run", "key", "text"), SNMF_BAD)
def test_bad_snmf_runs_fail_both(run, key, text):
    assert not jsonschema.Draft202012Validator(snmf.run_schema()).is_valid(run), run  # n_init's rule is in the schema too


@pytest.mark.parametrize(("run", "key"), [({"arch": "topk", "l1_coef": 1.0}, "l1_coef"), ({"l1_coef": 1.0}, "l1_coef"),
                                          ({"arch": "relu", "l1_coef": "x"}, "l1_coef"), ({"stepz": 3}, "stepz"),
                                          ({"arch": "gba", "gba_rate": 2}, "gba_rate"), ({"lr": 0}, "lr")])
def test_schema_errors_name_the_key(run, key):
    """The first error by depth (what the config loader reports) and jsonschema's best match name the key."""
    errors = list(jsonschema.Draft202012Validator(sae_run_schema()).iter_errors(run))
    first = sorted(errors, key=lambda e: (len(list(e.absolute_path)), e.message))[0]
    best = jsonschema.exceptions.best_match(errors)
    for e in (first, best):
        assert key in e.message or key in list(e.absolute_path), (e.message, list(e.absolute_path))
