"""The study report: one self-contained HTML page of maps and plots (``build_report``)."""

from mechflow.report.page import build_report, esc

__all__ = ["build_report", "esc"]
