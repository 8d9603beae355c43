"""Spatial statistics vectorised over features: KNN weights, global Moran's I / Geary's C,
local Moran's I (LISA), Benjamini-Hochberg FDR, and per-region xarray Datasets."""

from mechflow.spatial.analysis import spatial_analysis
from mechflow.spatial.datasets import lisa_dataset, moran_dataset
from mechflow.spatial.fdr import fdr_bh
from mechflow.spatial.global_stats import global_autocorrelation, global_geary, global_moran
from mechflow.spatial.local_stats import local_moran
from mechflow.spatial.weights import count_duplicates, knn_indices, knn_weights, project

__all__ = [
    "count_duplicates",
    "fdr_bh",
    "global_autocorrelation",
    "global_geary",
    "global_moran",
    "knn_indices",
    "knn_weights",
    "lisa_dataset",
    "local_moran",
    "moran_dataset",
    "project",
    "spatial_analysis",
]
