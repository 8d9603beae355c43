"""The machine a benchmark ran on, for its results file (shared by ``benchmarks/*.py``).

Benchmarks run as scripts (``python benchmarks/x.py``), so this folder is on ``sys.path`` and they
import it as ``from _device import device_info``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_info(**extra: Any) -> dict[str, Any]:
    """CPU, core count, Python / NumPy / torch versions, torch threads, and the GPU's name where CUDA is present."""
    import numpy as np

    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                            "numpy": np.__version__}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of mechflow
        info["cuda"] = False
    else:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return {**info, **extra}


def write_result(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write a benchmark's results file (JSON, indented, UTF-8), creating its folder; returns the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
