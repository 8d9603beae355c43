"""The plan as plain text (``mechflow info``): the study, jobs and resources per rule, every intermediate's size."""

from __future__ import annotations

from mechflow.contracts import RESULT_PATHS
from mechflow.plan.build import Plan
from mechflow.plan.sizes import FileSize

__all__ = ["human", "format_plan"]


def human(n: float | None) -> str:
    """Bytes as B, kB, MB, GB, TB (powers of 1000, as Snakemake's mem_mb)."""
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header).rstrip(), "  ".join("-" * w for w in widths), *[fmt(r).rstrip() for r in rows]]


def _pattern(kind: str) -> str:
    base, _, name = kind.partition("/")
    return RESULT_PATHS[base] + (f"/{name}" if name else "")


def format_plan(plan: Plan) -> str:
    """The plan as plain text: the study, jobs and resources per rule, every intermediate's size."""
    f = plan.facts
    lines = [f"study {plan.configfile}: {plan.jobs} jobs (Snakemake dry run of the whole study); results under {plan.results}/"]
    for d, regions in f.regions.items():
        lines.append(f"  prompt set {d}: {f.n(d)} prompts ({', '.join(f'{r} {c}' for r, c in regions.items())})")
    for m, mf in f.models.items():
        widths = ", ".join(f"{h} {w}" for h, w in mf.widths.items() if w)
        lines.append(f"  model {m}: {mf.layers} layers; units {widths}; weight files {human(mf.weight_bytes)}")
    lines += ["", "jobs and the resources each job requests; est. peak = estimated resident memory of the largest job",
              "(<= : an upper bound, every prompt counted at extract.max_length tokens)"]
    rows = []
    over = []
    for r in plan.rules:
        flag = ""
        if r.peak_bytes and r.mem_mb and r.peak_bytes > r.mem_mb * 1e6:
            flag = " (over mem_mb)"
            over.append(r.rule)
        peak = ("<= " if r.peak_bound and r.peak_bytes else "") + human(r.peak_bytes) + flag
        rows.append([r.rule, r.jobs, r.threads, r.resources.get("mem_mb", "-"), r.resources.get("gpu", "-"),
                     r.resources.get("runtime", "-"), peak, r.note])
    rows.append(["total", plan.jobs, "", "", "", "", "", ""])
    lines += _table(["rule", "jobs", "threads", "mem_mb", "gpu", "runtime", "est. peak", "note"], rows, {1, 2, 3, 4})
    lines += ["", "intermediates (<= : an upper bound; - : small, not estimated)"]
    kinds: dict[str, list[FileSize]] = {}
    for fs in plan.files:
        kinds.setdefault(fs.kind, []).append(fs)
    rows, total = [], 0
    for kind, fss in kinds.items():
        sizes = [x.bytes for x in fss if x.bytes is not None]
        mark = "<= " if any(x.bound for x in fss) else ""
        largest = mark + human(max(sizes)) if sizes else "-"
        subtotal = mark + human(sum(sizes)) if sizes else "-"
        total += sum(sizes)
        rows.append([_pattern(kind), len(fss), largest, subtotal])
    rows.append(["total", len(plan.files), "", human(total)])
    lines += _table(["file", "files", "largest", "total"], rows, {1, 2, 3})
    if over:
        lines += ["", f"estimated peak above the requested mem_mb: {', '.join(over)} (raise <step>.mem_mb in the study; "
                      "an upper bound may overstate it)"]
    return "\n".join(lines) + "\n"
