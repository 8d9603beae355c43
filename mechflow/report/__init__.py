"""The study report: one self-contained HTML page of maps and plots (:func:`build_report`).

Modules: ``loaders`` (manifest index, cached file reading), ``stats`` (significance summaries of
moran files), ``plotting`` (matplotlib style, PNG encoding), ``maps`` (region geometry and maps),
``figures`` (charts), ``html`` (escaping, tables, page), ``sections/`` (one builder per section).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mechflow import __version__
from mechflow.io import atomic_path, atomic_write_text
from mechflow.report.html import Page, Section, esc, note, table, tag
from mechflow.report.loaders import Study
from mechflow.report.plotting import style
from mechflow.report.sections import autocorrelation, evidence, explorer, lens, probing, regions, sae, snmf, steering, summary
from mechflow.report.sections.context import Context

__all__ = ["build_report", "esc", "SECTIONS"]

log = logging.getLogger(__name__)

#: (id, heading, builder) of the page's top-level sections, in order
SECTIONS: tuple[tuple[str, str, Callable[[Context, Page, Section], None]], ...] = (
    ("summary", "Study summary", summary.build),
    ("moran", "Spatial autocorrelation", autocorrelation.build),
    ("evidence", "What survives the controls", evidence.build),
    ("regions", "Regions", regions.build),
    ("probes", "Location probes", probing.build),
    ("sae", "Sparse autoencoders", sae.build),
    ("snmf", "Semi-NMF factors", snmf.build),
    ("lens", "Reading the layers", lens.build),
    ("steering", "Steering", steering.build),
    ("explorer", "Feature explorers", explorer.build),
)


def build_report(manifest: Mapping[str, Any], out_dir: str | Path, base_dir: str | Path | None = None) -> Path:
    """Write ``out_dir/index.html`` (self-contained: figures embedded as base64 PNG), the same
    figures as ``out_dir/figures/*.png`` and the evidence table as ``out_dir/significance.md``;
    return the path of ``index.html``.

    ``manifest``: ``{"study": {...}, "prompts": [...], "activations": [...], "spatial": [...],
    "probes": [...], "sae": [...], "snmf": [...], "benchmarks": [...]}``, every section optional
    (see the report rule). Relative paths are read from ``base_dir`` (default: the working
    directory). Options read from ``study`` or ``study.config.report``: ``top_n`` (features mapped
    per region and feature set, default 4) and ``max_map_sets`` (feature sets mapped per region,
    default 4). A section whose inputs are missing says so; one that fails shows the error and the
    rest of the page is still written. Both outputs are written atomically.
    """
    t0 = time.perf_counter()
    study = Study(manifest, base_dir)
    top_n = int(study.option("top_n", 4))
    max_sets = int(study.option("max_map_sets", 4))
    if top_n < 1 or max_sets < 1:
        raise ValueError(f"top_n and max_map_sets must be >= 1, got {top_n} and {max_sets}")
    ctx = Context(study, top_n=top_n, max_map_sets=max_sets)
    title = str(study.study.get("title") or "mechflow study")
    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    digest = study.study.get("config_digest")
    page = Page(title, f"mechflow {__version__} · built {created}" + (f" · config {digest}" if digest else ""))
    with style():
        for sid, heading, builder in SECTIONS:
            sec = page.section(heading, sid)
            t1 = time.perf_counter()
            try:
                builder(ctx, page, sec)
                log.info("report section %s: %.1f s", sid, time.perf_counter() - t1)
            except Exception as err:  # noqa: BLE001 (one broken input must not lose the whole page)
                log.exception("report section %s failed", sid)
                sec.add(note(f"This section could not be built: {type(err).__name__}: {err}", "error"))
    if study.missing:
        sec = page.section("Missing results", "missing")
        sec.add(note(f"{len(study.missing)} file(s) listed in the manifest do not exist (yet); the sections above "
                     "leave them out. Run the workflow to produce them."),
                table(["kind", "path"], sorted(set(study.missing))))
    page.sections[0].add(tag("p", f"Report built in {time.perf_counter() - t0:.1f} s.", cls="subtitle"))
    return _write(page, Path(out_dir), _evidence_markdown(study))


def _evidence_markdown(study: Study) -> str:
    """``significance.md``: the evidence table and the layer-level table as markdown (for a README or a paper's
    supplement)."""
    from mechflow.report import layer_evidence
    from mechflow.report.evidence import evidence_table, to_markdown

    try:
        df = evidence_table(study)
    except Exception as err:  # noqa: BLE001 (the page's section shows the same error)
        return f"The evidence table could not be built: {type(err).__name__}: {err}\n"
    text = to_markdown(df) if not df.empty else "No spatial results of a trained model to compare with controls.\n"
    try:
        layers = layer_evidence.to_markdown(layer_evidence.layer_table(study))
    except Exception as err:  # noqa: BLE001 (the page's section shows the same error)
        layers = f"The layer-level table could not be built: {type(err).__name__}: {err}\n"
    return text + "\n" + layers


def _write(page: Page, out_dir: Path, evidence_md: str = "") -> Path:
    """Figures directory (swapped in whole), significance.md, then index.html; each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "significance.md", evidence_md)
    with atomic_path(out_dir / "figures") as tmp:
        tmp.mkdir()
        for fig in page.figures:
            (tmp / f"{fig.name}.png").write_bytes(fig.png)
    html_path = out_dir / "index.html"
    atomic_write_text(html_path, page.render())
    log.info("report: %s (%d figures, %.1f MB)", html_path, len(page.figures), html_path.stat().st_size / 1e6)
    return html_path
