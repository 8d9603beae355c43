"""HTML building blocks: escaping, tables, figures, notes, and the page with its table of contents.

Every piece of text that is not produced by this module is escaped with :func:`html.escape`
(placenames, config strings, run names, file paths). Trusted fragments built here are wrapped in
:class:`Markup` so that composing them never escapes twice and never lets raw user text through.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Markup(str):
    """A string of trusted HTML produced by this module (never from user input directly)."""

    __slots__ = ()


def esc(value: Any) -> Markup:
    """Escape any value for HTML text or attribute context (Markup passes through)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> Markup:
    """Concatenate fragments, escaping every part that is not Markup."""
    return Markup(esc(sep).join(esc(p) for p in parts))


def tag(name: str, *children: Any, cls: str | None = None, **attrs: Any) -> Markup:
    """``<name attrs>children</name>``; children and attribute values are escaped unless Markup."""
    if cls:
        attrs["class"] = cls
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return Markup(f"<{name}{attr}>{join(children)}</{name}>")


def slug(text: str, used: set[str] | None = None) -> str:
    """A safe, unique HTML id / file stem: lowercase ASCII letters, digits and dashes only."""
    base = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:60] or "x"
    out, i = base, 2
    while used is not None and out in used:
        out, i = f"{base}-{i}", i + 1
    if used is not None:
        used.add(out)
    return out


def fmt(value: Any, digits: int = 3) -> str:
    """Format a number for a table: NaN as an en dash, floats to ``digits`` significant places."""
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return str(value)


def pct(value: float) -> str:
    """A fraction as a percentage with one decimal (NaN as an en dash)."""
    return "–" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], cls: str = "data",
          numeric: Sequence[int] = ()) -> Markup:
    """A table; cells are escaped unless Markup; columns listed in ``numeric`` are right-aligned."""
    num = set(numeric)
    head = tag("tr", *[tag("th", h, cls="num" if i in num else None) for i, h in enumerate(headers)])
    body = [tag("tr", *[tag("td", c, cls="num" if i in num else None) for i, c in enumerate(r)]) for r in rows]
    return tag("div", tag("table", tag("thead", head), tag("tbody", *body), cls=cls), cls="table-wrap")


def note(text: Any, kind: str = "missing") -> Markup:
    """A callout: ``missing`` (something is not available), ``info`` or ``error``."""
    return tag("div", text, cls=f"note note-{kind}")


def badge(text: Any, kind: str = "") -> Markup:
    return tag("span", text, cls=f"badge {kind}".strip())


@dataclass
class Figure:
    """A PNG figure: embedded as a data: URI, also written to ``figures/<name>.png``."""

    name: str
    png: bytes
    caption: str | Markup
    alt: str

    def html(self) -> Markup:
        src = "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")
        img = Markup(f'<img src="{src}" alt="{esc(self.alt)}" data-file="figures/{esc(self.name)}.png">')
        return tag("figure", img, tag("figcaption", self.caption))


@dataclass
class Section:
    """A section (h2) or subsection (h3) of the page; ``body`` is a list of Markup fragments."""

    id: str
    title: str
    level: int = 2
    body: list[Markup] = field(default_factory=list)

    def add(self, *parts: Any) -> None:
        self.body.extend(esc(p) for p in parts)


@dataclass
class Page:
    """The report page: sections in order, figures to write beside it."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)
    _names: set[str] = field(default_factory=set)

    def section(self, title: str, id: str | None = None, level: int = 2) -> Section:
        sec = Section(slug(id or title, self._ids), title, level)
        self.sections.append(sec)
        return sec

    def figure(self, png: bytes, caption: str | Markup, name: str, alt: str | None = None) -> Markup:
        fig = Figure(slug(name, self._names), png, caption, alt or name)
        self.figures.append(fig)
        return fig.html()

    def render(self) -> str:
        toc = []
        for s in self.sections:
            toc.append(tag("li", tag("a", s.title, href=f"#{s.id}"), cls=f"toc-l{s.level}"))
        nav = tag("nav", tag("div", "Contents", cls="toc-title"), tag("ul", *toc), cls="toc")
        parts: list[Markup] = []
        open_top: list[Markup] | None = None  # a level-2 section holds the level-3 ones after it
        for s in [*self.sections, None]:
            if s is None or s.level <= 2:
                if open_top is not None:
                    parts.append(Markup(f"{join(open_top)}</section>"))
                if s is None:
                    break
            h = tag(f"h{s.level}", s.title, tag("a", "#", href=f"#{s.id}", cls="anchor"))
            if s.level <= 2:
                open_top = [Markup(f'<section id="{esc(s.id)}" class="level{s.level}">'), h, *s.body]
            else:
                sub = tag("section", h, *s.body, id=s.id, cls=f"level{s.level}")
                if open_top is None:
                    parts.append(sub)
                else:
                    open_top.append(sub)
        header = tag("header", tag("h1", self.title), tag("p", self.subtitle, cls="subtitle"))
        main = tag("main", header, *parts)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(self.title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<div class=\"layout\">{nav}{main}</div>\n</body>\n</html>\n"
        )


CSS = """
:root{--fg:#1f2430;--muted:#5f6b7a;--line:#e3e7ee;--bg:#f6f7fb;--card:#fff;--accent:#2c7bb6;
--hh:#d7191c;--ll:#2c7bb6;font-size:15px}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;line-height:1.5}
.layout{display:flex;align-items:flex-start}
.toc{position:sticky;top:0;height:100vh;overflow-y:auto;width:235px;flex:0 0 235px;padding:22px 14px 22px 20px;
background:#fff;border-right:1px solid var(--line);font-size:.86rem}
.toc-title{font-weight:700;text-transform:uppercase;letter-spacing:.06em;font-size:.72rem;color:var(--muted);margin-bottom:8px}
.toc ul{list-style:none;margin:0;padding:0}
.toc li{margin:2px 0}.toc li.toc-l3{padding-left:14px;font-size:.82rem}
.toc a{color:var(--fg);text-decoration:none;display:block;padding:2px 6px;border-radius:5px}
.toc a:hover{background:#eef3fa;color:var(--accent)}
main{flex:1;min-width:0;max-width:1180px;padding:26px 40px 80px}
header h1{margin:0 0 4px;font-size:1.75rem;letter-spacing:-.01em}
.subtitle{margin:0 0 18px;color:var(--muted)}
section.level2{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:6px 26px 20px;margin:22px 0;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
section.level3{border-top:1px solid var(--line);margin-top:18px;padding-top:4px}
h2{font-size:1.35rem;margin:18px 0 10px}h3{font-size:1.1rem;margin:16px 0 8px}h4{font-size:.98rem;margin:14px 0 6px}
.anchor{margin-left:8px;color:#c3cad6;text-decoration:none;font-weight:400;font-size:.8em}
.anchor:hover{color:var(--accent)}
p{margin:6px 0 10px}
figure{margin:12px 0 18px}
figure img{max-width:100%;height:auto;display:block;border-radius:6px;background:#fff}
figcaption{color:var(--muted);font-size:.86rem;margin-top:6px;max-width:960px}
.table-wrap{overflow-x:auto;margin:8px 0 16px}
table.data{border-collapse:collapse;font-size:.85rem;min-width:50%}
table.data th{text-align:left;font-weight:600;color:var(--muted);border-bottom:2px solid var(--line);padding:6px 10px;white-space:nowrap}
table.data td{border-bottom:1px solid var(--line);padding:5px 10px;vertical-align:top}
table.data tbody tr:nth-child(even){background:#fafbfd}
table.data .num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.note{border-radius:8px;padding:9px 14px;margin:10px 0;font-size:.9rem}
.note-missing{background:#fff8e6;border:1px solid #f3dfa6;color:#6b5210}
.note-info{background:#eef5fc;border:1px solid #cfe1f3;color:#1d4f7a}
.note-error{background:#fdecec;border:1px solid #f4c2c2;color:#8a1c1c}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;margin:12px 0 16px}
.tile{background:#f8fafd;border:1px solid var(--line);border-radius:10px;padding:10px 12px}
.tile .v{font-size:1.35rem;font-weight:650}.tile .k{color:var(--muted);font-size:.78rem;text-transform:uppercase;letter-spacing:.04em}
.badge{display:inline-block;background:#eef1f6;border-radius:999px;padding:1px 9px;font-size:.78rem;margin:0 4px 4px 0;color:#394252}
.badge.ctrl{background:#f1f1f1;color:#666}.badge.sig{background:#fde3e3;color:#a51d1d}
.card{border:1px solid var(--line);border-radius:10px;padding:10px 16px 4px;margin:14px 0;background:#fcfdff}
.card h4{margin-top:6px}
.cols{display:grid;grid-template-columns:minmax(260px,1fr) 2.2fr;gap:16px;align-items:start}
@media (max-width:1000px){.toc{display:none}main{padding:16px}.cols{grid-template-columns:1fr}}
details{margin:8px 0}summary{cursor:pointer;color:var(--accent)}
pre{background:#f4f6fa;border:1px solid var(--line);border-radius:8px;padding:10px 12px;overflow-x:auto;font-size:.8rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em}
.ctrl{color:#8a929c}
ol.prompts{columns:2;column-gap:32px;font-size:.86rem;margin:4px 0 12px;padding-left:24px}
ol.prompts li{break-inside:avoid;margin:1px 0}
.card .k{color:var(--muted);font-size:.78rem;text-transform:uppercase;letter-spacing:.04em;margin-top:4px}
table.data td .badge{white-space:nowrap}
.legend{display:flex;flex-wrap:wrap;gap:12px;font-size:.82rem;color:var(--muted);margin:4px 0}
.sw{display:inline-block;width:11px;height:11px;border-radius:50%;margin-right:5px;vertical-align:-1px}
"""
