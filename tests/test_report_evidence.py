"""The evidence table: each column is the fraction a hand computation gives from the same moran files,
companions are found from the study config, and the report writes the table as HTML and markdown."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from mechflow.io import write_dataset
from mechflow.report import build_report, layer_evidence
from mechflow.report.evidence import COLUMNS, evidence_table, name_only_companion, random_companion, to_markdown
from mechflow.report.loaders import Study
from mechflow.spatial.analysis import spatial_analysis
from mechflow.spatial.fdr import fdr_bh

pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning")]
PLACES = {"source": "geonames", "regions": ["GB", "IT"], "gazetteer": "cities500", "min_population": 0,
          "max_per_region": 100, "seed": 0}
CONFIG = {
    "datasets": {"d": {**PLACES, "template": "{name}, {admin1_name}"}, "d-name": {**PLACES, "template": "{name}"},
                 "other": {**PLACES, "seed": 1, "template": "{name}"}},
    "models": {"m": {"spec": "package:x/m"}, "m-random": {"spec": "package:x/m", "random_init": True},
               "n": {"spec": "package:x/n"}},
}


def _feature_set(seed: int, template_units: bool, n_gb=120, n_it=100) -> tuple[xr.DataArray, xr.DataArray]:
    """Units [prompt, unit]: 0-2 follow the admin-1 unit and length (the template), 3-4 a smooth field,
    5-9 noise; and the same pooled with a sink / n_tokens term (what the first token adds)."""
    rng = np.random.default_rng(seed)
    lon = np.r_[rng.uniform(-4.0, 0.5, n_gb), rng.uniform(8.0, 15.0, n_it)]
    lat = np.r_[rng.uniform(51.0, 55.0, n_gb), rng.uniform(38.0, 46.0, n_it)]
    region = np.array(["GB"] * n_gb + ["IT"] * n_it)
    admin1 = np.where(region == "GB", np.where(lon < -1.75, "W", "E"), np.where(lat < 42.0, "S", "N"))
    n_tokens = np.where(admin1 == "W", 6, 3) + rng.integers(0, 3, region.size)
    v = rng.standard_normal((region.size, 10))
    if template_units:
        v[:, :3] += 2.0 * (admin1 == "W")[:, None] + 1.5 * (admin1 == "N")[:, None]
    v[:, 3:5] += np.c_[np.cos(lat * 3.0) + np.sin(lon * 2.5)] * 2.0
    da = xr.DataArray(v.astype(np.float32), dims=("prompt", "unit"), coords={
        "prompt": np.arange(region.size), "unit": np.arange(10), "longitude": ("prompt", lon), "latitude": ("prompt", lat),
        "region": ("prompt", region), "admin1_code": ("prompt", admin1), "n_tokens": ("prompt", n_tokens)})
    sink = da + (30.0 / da["n_tokens"]).astype(np.float32) * xr.DataArray(np.linspace(1, 2, 10, dtype=np.float32), dims="unit")
    return da, sink


@pytest.fixture(scope="module")
def evidence_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    params = dict(k=6, transform="r", permutations=99, seed=0, crs={}, lisa_top_n=0, shuffled_control=True,
                  residualise=True)
    manifest = {"spatial": [], "study": {"title": "evidence", "config": CONFIG}}
    for dataset, model, seed, template, position in (("d", "m", 0, True, None), ("d", "m-random", 1, False, None),
                                                     ("d-name", "m", 2, False, None), ("d-name", "m", 3, False, "last"),
                                                     ("d-name", "m", 4, False, "mean")):
        da, sink = _feature_set(seed, template)
        moran, _ = spatial_analysis(da, params, with_sink=sink if (dataset, model) == ("d", "m") else None)
        path = root / f"{dataset}_{model}_{position}.nc"
        write_dataset(moran, path)
        manifest["spatial"].append({"dataset": dataset, "model": model, "hook": "resid", "layer": 3, "kind": "units",
                                    "run": position and f"name_{position}", "name_position": position,
                                    "moran": str(path), "lisa": None})
    return manifest


def test_companions_come_from_the_config():
    assert random_companion(CONFIG, "m") == "m-random" and random_companion(CONFIG, "n") is None
    assert name_only_companion(CONFIG, "d") == "d-name"  # "other" samples other places (seed 1)
    assert name_only_companion(CONFIG, "d-name") is None


def test_each_column_equals_a_hand_computation(evidence_study):
    df = evidence_table(Study(evidence_study))
    assert list(df[["dataset", "model"]].drop_duplicates().itertuples(index=False, name=None)) == [("d", "m")]
    assert df["region"].tolist() == ["GB", "IT"] and (df["n_features"] == 10).all()
    files = {(e["dataset"], e["model"]): xr.load_dataset(e["moran"]) for e in evidence_study["spatial"]}
    main = files["d", "m"]

    def frac(ds, I, sig, region):
        i = ds[I].sel(region=region).values
        return float(sig.sel(region=region).values[np.isfinite(i)].mean())

    for row in df.itertuples():
        r = row.region
        folded = main["p_sim_with_sink"].copy(data=fdr_bh(main["p_sim_with_sink"].values))
        expect = {
            "before": frac(main, "I_with_sink", (folded < 0.05) & (main.I_with_sink > main.EI), r),
            "pooling": frac(main, "I", (main.p_sim.copy(data=fdr_bh(main.p_sim.values)) < 0.05) & (main.I > main.EI), r),
            "one_sided": frac(main, "I", (main.q_greater < 0.05) & (main.I > main.EI), r),
            "shuffled": frac(main, "I_shuffled", (main.q_greater_shuffled < 0.05) & (main.I_shuffled > main.EI), r),
            "residualised": frac(main, "I_resid", (main.q_greater_resid < 0.05) & (main.I_resid > main.EI), r),
        }
        for name, other in (("random_init", files["d", "m-random"]), ("name_only", files["d-name", "m"])):
            expect[name] = frac(other, "I", (other.q_greater < 0.05) & (other.I > other.EI), r)
        other = files["d-name", "m"]
        expect["name_only_residualised"] = frac(other, "I_resid", (other.q_greater_resid < 0.05) & (other.I_resid > other.EI), r)
        for col, value in expect.items():
            assert getattr(row, col) == pytest.approx(value), (col, r)
    gb = df.set_index("region").loc["GB"]
    assert gb.one_sided >= 0.5 and gb.residualised <= 0.2 + 1e-9  # the template units do not survive residualising
    assert gb.shuffled <= 0.1


def test_report_writes_the_table_as_html_and_markdown(evidence_study, tmp_path):
    html = build_report(evidence_study, tmp_path).read_text(encoding="utf-8")
    assert 'id="evidence"' in html and "d / m: significant fraction under each control" in html
    md = (tmp_path / "significance.md").read_text()
    assert md.split("## Layer-level tests")[0].count("| d / m | units | 3 |") == 2
    for head, _ in COLUMNS.values():
        assert head in md
    assert md.startswith(to_markdown(evidence_table(Study(evidence_study))))
    assert md.endswith(layer_evidence.to_markdown(layer_evidence.layer_table(Study(evidence_study))))
    assert "Layer-level tests: how much geography a whole layer carries" in html


def test_layer_table_reads_each_variant_from_its_file(evidence_study):
    df = layer_evidence.layer_table(Study(evidence_study))
    files = {(e["dataset"], e["model"], e["run"]): xr.load_dataset(e["moran"]) for e in evidence_study["spatial"]}
    sources = {"template": (("d", "m", None), ""), "residualised": (("d", "m", None), "_resid"),
               "shuffled": (("d", "m", None), "_shuffled"), "name_only": (("d-name", "m", None), ""),
               "name_only_last": (("d-name", "m", "name_last"), ""), "name_only_mean": (("d-name", "m", "name_mean"), ""),
               "name_only_residualised": (("d-name", "m", None), "_resid"), "random_init": (("d", "m-random", None), "")}
    assert set(df["variant"]) == set(sources) and set(df["stat"]) == set(layer_evidence.STATS)
    assert len(df) == 2 * len(layer_evidence.STATS) * len(sources)  # two regions of the one main entry
    for row in df.itertuples():
        key, suffix = sources[row.variant]
        ds = files[key].sel(region=row.region, layer_stat=row.stat)
        assert row.p == pytest.approx(float(ds[f"layer_p{suffix}"]))
        assert row.excess == pytest.approx(float(ds[f"layer_obs{suffix}"]) - float(ds[f"layer_null_mean{suffix}"]))
    gb = df[(df.region == "GB") & (df.stat == "mean_I")].set_index("variant")
    assert gb.loc["template", "p"] <= 0.01 and gb.loc["template", "excess_lo"] > 0  # smooth-field units
    for (_, _, _, _, stat, variant), cells in df.groupby(layer_evidence.FAMILY, sort=False):  # q: BH over layer x region
        expect = np.full(len(cells), np.nan) if variant == "shuffled" else fdr_bh(cells.p.to_numpy(dtype=float))
        np.testing.assert_allclose(cells.q.to_numpy(dtype=float), expect, err_msg=f"{stat} {variant}")
    k, m = layer_evidence.calibration(df)  # every shuffle of every cell: 200 (the default) per cell
    shuffled = df[df.variant == "shuffled"]
    assert m == 2 * len(layer_evidence.STATS) * 200 and (shuffled.n_shuffles == 200).all()
    main = files["d", "m", None]
    for row in shuffled.itertuples():
        p = main["layer_shuffle_p"].sel(region=row.region, layer_stat=row.stat).values
        assert row.shuffles_p05 == (p <= 0.05).sum()
        assert row.shuffles_ks_p == pytest.approx(stats.kstest(p, "uniform", alternative="greater").pvalue)
    assert k == shuffled.shuffles_p05.sum() and k / m < 0.1  # the units with structure do not make shuffles significant
    md = layer_evidence.to_markdown(df)
    assert f"Calibration: {k} of {m} shuffled-coordinate layer p-values" in md and "/200 p<=0.05, KS p=" in md
    assert md.count("| d / m | units | 3 | GB |") == len(layer_evidence.STATS) and "shuffled coords" in md
    assert "name-only, last name token" in md and "within their admin-1 unit" in md
