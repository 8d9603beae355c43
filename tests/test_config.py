"""Config validation: schema errors and semantic checks give one-line messages naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mechflow.config import ConfigError, check_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def check(cfg, base=REPO):
    return check_config(cfg, base_dir=base, schema_path=REPO / "config.schema.yaml")


def test_default_and_shipped_configs_are_valid():
    filled = check(copy.deepcopy(DEFAULT))
    assert filled["extract"]["pooling"] == "mean" and filled["datasets"]["places"]["source"] == "geonames"
    for extra in sorted((REPO / "configs").glob("*.yaml")):
        check(yaml.safe_load(extra.read_text()))


def test_defaults_are_filled():
    filled = check({"datasets": {"d": {}}, "models": DEFAULT["models"]})
    assert filled["datasets"]["d"]["regions"] == ["GB", "IT", "NYMETRO"]
    assert filled["extract"]["hooks"] == ["resid"] and filled["extract"]["shards"] == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(bogus=1), r"config error at \(top level\): unknown key\(s\) \('bogus' was unexpected\)"),
    (lambda c: c["extract"].update(poolin="mean"), r"extract: unknown key"),
    (lambda c: c["extract"].update(batch_size="8"), r"extract.batch_size: '8' is not of type 'integer'"),
    (lambda c: c["extract"].update(pooling="median"), r"extract.pooling: 'median' is not one of"),
    (lambda c: c["extract"].update(layers="some"), r"extract.layers:"),
    (lambda c: c["datasets"]["places"].update(max_per_region=0), r"max_per_region: 0 is less than the minimum of 1"),
    (lambda c: c["datasets"]["places"].update(regions=["XX"]), r"datasets.places: unknown region preset 'XX'"),
    (lambda c: c["datasets"]["places"].update(template="{nme}"), r"unknown field\(s\) \['nme'\]"),
    (lambda c: c["datasets"]["places"].update(source="csv"), r"datasets.places: 'path' is a required property"),
    (lambda c: c["models"]["smollm2"].update(spec="/no/such/model"), r"models.smollm2.spec: .*does not exist"),
    (lambda c: c["models"]["smollm2"].update(spec="tests"), r"models.smollm2.spec: .*has no weights"),
    (lambda c: c["models"]["smollm2"].update(device="gpu"), r"models.smollm2.device: 'gpu' does not match"),
    (lambda c: c.update(models={"bad name!": {"spec": "x"}}), r"does not match"),
])
def test_bad_configs_give_one_line_errors(mutate, message):
    cfg = copy.deepcopy(DEFAULT)
    mutate(cfg)
    with pytest.raises(ConfigError, match=message) as err:
        check(cfg)
    assert "\n" not in str(err.value) and str(err.value).startswith("config error at ")


def test_bad_prompt_files_fail_at_config_time(tmp_path):
    nan = tmp_path / "p.csv"
    nan.write_text("text,latitude,longitude,region\nLeeds,nan,-1.5,GB\n")
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"] = {"mine": {"source": "csv", "path": str(nan)}}
    with pytest.raises(ConfigError, match="datasets.mine: .*non-finite coordinates"):
        check(cfg)
    nan.write_text("text,latitude,longitude,region\n")
    with pytest.raises(ConfigError, match="datasets.mine: .*empty"):
        check(cfg)
