"""Feature explorers: a link to the static explorer of every feature set (rule explorer), and how to open the live one."""

from __future__ import annotations

from mechflow.report.html import Page, Section, table, tag
from mechflow.report.sections.context import Context


def link(folder: str) -> str:
    """The explorer's index page relative to the report's folder (``<results>/report/``): ``../explorer/...``."""
    rest = str(folder).replace("\\", "/").rsplit("/explorer/", 1)[-1]
    return f"../explorer/{rest}/index.html"


def build(ctx: Context, page: Page, sec: Section) -> None:
    have = ctx.available(sec, "explorer", "No feature explorers in this study (explorer.enabled: false, or no spatial step).",
                         "feature explorers", file_of=lambda e: f"{e['dir']}/index.html")
    if not have:
        return
    sec.add(tag("p", "Every feature of every feature set, offline: sort by Moran's I, LISA, density or maximum; each "
                     "feature's top contexts with every token highlighted, its map (pan, zoom, hover), histogram, promoted and "
                     "suppressed tokens and nearest features. Try your own text with ", tag("code", "mechflow explore --configfile "
                     "<study>.yaml"), " (served on 127.0.0.1)."))
    rows = [(tag("a", e["source"], href=link(e["dir"])), e["dataset"], e["model"], e["hook"], e["layer"]) for e in have]
    sec.add(table(["feature set", "prompt set", "model", "hook", "layer"], rows))
