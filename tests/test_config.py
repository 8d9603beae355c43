"""Config validation: schema errors and semantic checks give one-line messages naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mechflow.resolve import resolve_study
from mechflow.study import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def check(cfg, base=REPO):
    return resolve_study(cfg, base_dir=base, schema_path=REPO / "config.schema.yaml")


def test_default_and_shipped_configs_are_valid():
    filled = check(copy.deepcopy(DEFAULT))
    assert filled["extract"]["pooling"] == "mean" and filled["datasets"]["places"]["source"] == "geonames"
    for extra in sorted((REPO / "configs").glob("*.yaml")):
        if extra.name == "sae-corpus-gpu.yaml":  # reads the user's corpus: test_corpus_step gives it one
            continue
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
    (lambda c: c["snmf"].update(device="gpu"), r"snmf.device: 'gpu' does not match"),
    (lambda c: c.update(models={"bad name!": {"spec": "x"}}), r"does not match"),
    (lambda c: c["datasets"]["places"].update(models=["gpt9"]), r"datasets.places.models: unknown model 'gpt9'"),
    (lambda c: c["sae"].update(datasets=["nowhere"]), r"sae.datasets: unknown prompt set 'nowhere'"),
    (lambda c: c["probes"].update(datasets=["places-name-only"], models=["smollm2-random"]),
     r"probes.datasets: no model of probes.models runs on \['places-name-only'\]"),
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
    for section in ("probes", "sae", "snmf"):
        cfg[section].pop("datasets", None)  # the default study restricts them to its `places`
    with pytest.raises(ConfigError, match="datasets.mine: .*non-finite coordinates"):
        check(cfg)
    nan.write_text("text,latitude,longitude,region\n")
    with pytest.raises(ConfigError, match="datasets.mine: .*empty"):
        check(cfg)


TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())  # 30 places per region, MiniLM (6 layers)


def _csv(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("mutate, key, message", [
    (lambda c, t: c["spatial"].update(k=50), "spatial.k", r"region 'GB' of dataset 'tiny' has 30 places; k = 50"),
    (lambda c, t: c["probes"].update(folds=100), "probes.folds", r"has 30 places; 100 folds"),
    (lambda c, t: c["spatial"].update(crs={"GB": "EPSG:99999"}), "spatial.crs.GB", r"not a CRS pyproj knows"),
    (lambda c, t: c["spatial"].update(crs={"GB": "EPSG:4326"}), "spatial.crs.GB", r"not a projected CRS in metres"),
    (lambda c, t: c["extract"].update(layers=[99]), "extract.layers", r"\[99\] do not exist in model 'minilm' \(6 layers"),
    (lambda c, t: c["snmf"]["runs"]["k6"].update(n_factors=5000), "snmf.runs.k6.n_factors", r"5000 factors from the 1536 units"),
    (lambda c, t: c["snmf"].update(level="pooled") or c["snmf"]["runs"]["k6"].update(n_factors=100),
     "snmf.runs.k6.n_factors", r"100 factors from the 60 prompts"),
    (lambda c, t: c["models"]["minilm"].update(device="cuda"), "models.minilm.device", r"'cuda' is not available here"),
    (lambda c, t: c["sae"]["runs"]["topk"].update(device="cuda:3"), "sae.runs.topk.device", r"'cuda:3' is not available"),
    (lambda c, t: c["datasets"]["tiny"].update(min_population=10**9), "datasets.tiny", r"empty: no prompts matched"),
    (lambda c, t: c["datasets"]["tiny"].update(template="{name"), "datasets.tiny", r"not a valid format string"),
    (lambda c, t: c["datasets"].update(tiny={"source": "csv", "path": _csv(t, "e.csv", b"")}), "datasets.tiny",
     r"the file is empty"),
    (lambda c, t: c["datasets"].update(tiny={"source": "csv", "path": _csv(
        t, "l.csv", "text,latitude,longitude,region\nK\xf6ln,50.9,6.9,GB\n".encode("latin-1"))}), "datasets.tiny", r"not UTF-8"),
    (lambda c, t: c["datasets"].update(tiny={"source": "csv", "path": _csv(
        t, "p.csv", b"text,latitude,longitude,region,place_id\nLeeds,53.8,-1.5,GB,leeds\n")}), "datasets.tiny",
     r"'place_id' must hold integers"),
    (lambda c, t: c["datasets"].update(tiny={"source": "csv", "path": _csv(
        t, "s.csv", b"text,latitude,longitude,region\n" + b"".join(b"P%d,53.%d,-1.5,GB\n" % (i, i) for i in range(3)))}),
     "spatial.k", r"region 'GB' of dataset 'tiny' has 3 places"),
    (lambda c, t: c["datasets"].update(tiny={"source": "csv", "path": _csv(
        t, "r.csv", b"text,latitude,longitude,region\n" + b"".join(b"P%d,40.%02d,10.%02d,XX\n" % (i, i, i) for i in range(40)))}),
     "spatial.crs", r"no projected CRS for region\(s\) \['XX'\]"),
])
def test_bad_study_inputs_fail_before_any_job_with_one_line(tmp_path, mutate, key, message):
    cfg = copy.deepcopy(TINY)
    mutate(cfg, tmp_path)
    with pytest.raises(ConfigError, match=message) as err:
        check(cfg)
    assert str(err.value).startswith(f"config error at {key}: ") and "\n" not in str(err.value)


def test_inline_region_crs_is_the_study_crs():
    from mechflow.study import study_crs

    cfg = check({"datasets": {"d": {"regions": [{"name": "LAZIO", "country": "IT", "crs": "EPSG:32633",
                                                 "admin1": {"07": {"en": "Lazio", "local": "Lazio"}}}]}},
                 "models": TINY["models"], "probes": {"enabled": False}, "sae": {}, "spatial": {"k": 4}})
    assert study_crs(cfg) == {"LAZIO": "EPSG:32633"}
    cfg["spatial"]["crs"] = {"LAZIO": "EPSG:25833"}
    assert study_crs(cfg) == {"LAZIO": "EPSG:25833"}  # an override wins
