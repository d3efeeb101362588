"""Heat per labelled region: how much of the map falls in each atlas or annotation label."""

from __future__ import annotations

import os

import numpy as np

COLUMNS = ("index", "label", "voxels", "mean heat", "peak heat", "share of heat")


def region_table(heatmap: np.ndarray, labels: np.ndarray, names: dict[int, str] | None = None) -> list[dict]:
    """One row per non-zero label, sorted by share of the total heat (largest first).

    heatmap: (D, H, W) float map; labels: (D, H, W) integers on the same voxels; names: value ->
    name (``label`` is the name when known, else the value as text; ``index`` is the value).
    """
    heatmap, labels = np.asarray(heatmap, dtype=np.float64), np.asarray(labels)
    if heatmap.shape != labels.shape:
        raise ValueError(
            f"the labels ({'x'.join(map(str, labels.shape))}) are not on the heatmap's voxels "
            f"({'x'.join(map(str, heatmap.shape))}); pick a Labels layer in the same space"
        )
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    flat = heatmap.ravel()
    counts = np.bincount(inverse)
    sums = np.bincount(inverse, weights=flat)
    peaks = np.full(len(ids), -np.inf)
    np.maximum.at(peaks, inverse, flat)
    total = flat.sum()
    rows = []
    for i, label in enumerate(ids):
        if label == 0:
            continue
        rows.append({
            "index": int(label),
            "label": (names or {}).get(int(label), str(int(label))),
            "voxels": int(counts[i]),
            "mean heat": float(sums[i] / counts[i]),
            "peak heat": float(peaks[i]),
            "share of heat": float(sums[i] / total) if total > 0 else 0.0,
        })
    rows.sort(key=lambda r: r["share of heat"], reverse=True)
    return rows


def write_csv(rows: list[dict], path: str | os.PathLike, about: dict | None = None) -> str:
    """Write a region table (CSV, or TSV for a ``.tsv`` name) atomically; ``about``: what it came
    from (heatmap, method, layer, class, labels), written as its header. Returns the path."""
    from .outputs import write_rows

    return write_rows(path, rows, COLUMNS, about)
