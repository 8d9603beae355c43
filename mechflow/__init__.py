"""mechflow: mechanistic interpretability of language models as a reproducible workflow."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mechflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
