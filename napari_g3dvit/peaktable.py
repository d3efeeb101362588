"""Where the heat is: the map's clusters and their peaks in millimetres, largest peak first.

A cluster is a 26-connected set of voxels whose heat is above a threshold (as FSL's ``cluster``
connects them). For each cluster the table gives its peak's position in scanner millimetres (the
centre of the hottest voxel, through the file's exact affine), the heat there, the number of
voxels, their volume in mm^3, their mean heat and, given labels, the label at the peak.

``peaks(layer)`` takes a heat layer made by the explain widget (and a Labels layer on any grid in
the same world space); ``peaks(array, affine=...)`` a map from a script. ``find_peaks`` does the
arithmetic on arrays and is what both end in, as does ``g3dvit bids`` for its ``_peaks.tsv``.
This module imports neither Qt nor napari.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

#: clusters smaller than this many voxels are left out by default
DEFAULT_MIN_VOXELS = 5
COLUMNS = ("cluster", "x_mm", "y_mm", "z_mm", "peak_heat", "voxels", "volume_mm3", "mean_heat", "label")


@dataclass(frozen=True)
class Peak:
    """One cluster of heat. peak_mm: scanner (x, y, z) of its hottest voxel's centre, mm."""

    peak_mm: tuple[float, float, float]
    peak: float  # heat at the peak
    voxels: int
    volume_mm3: float
    mean: float  # mean heat over the cluster
    label: str | None  # the label at the peak: its name, else its number; None without labels or outside them
    voxel: tuple[int, int, int]  # the peak's index on the heat's grid
    world: tuple[float, ...] | None = None  # the peak in the viewer's world coordinates (layers only)

    def row(self, number: int) -> dict:
        x, y, z = self.peak_mm
        return {"cluster": number, "x_mm": round(x, 2), "y_mm": round(y, 2), "z_mm": round(z, 2),
                "peak_heat": self.peak, "voxels": self.voxels, "volume_mm3": round(self.volume_mm3, 3),
                "mean_heat": self.mean, "label": self.label}


@dataclass(frozen=True)
class PeakTable(Sequence):
    """Clusters, largest peak first, with the threshold and minimum size that made them.

    space: what the millimetres are ("MNI152", "scanner", ...; see ``volumes.space_name``).
    """

    peaks: tuple[Peak, ...]
    threshold: float
    min_voxels: int
    space: str = "scanner"

    def __len__(self) -> int:
        return len(self.peaks)

    def __getitem__(self, index):
        return self.peaks[index]

    def __iter__(self) -> Iterator[Peak]:
        return iter(self.peaks)

    def rows(self) -> list[dict]:
        """One dict per cluster, numbered from 1 (the table's rows; ``COLUMNS`` are its keys)."""
        return [peak.row(i) for i, peak in enumerate(self.peaks, start=1)]

    def about(self) -> dict[str, str]:
        return {"threshold": f"heat > {self.threshold:.6g}", "clusters": f"26-connected, at least "
                f"{self.min_voxels} voxels", "coordinates": f"{self.space} mm (x, y, z) of each cluster's peak voxel"}

    def write_csv(self, path: str | os.PathLike, about: dict | None = None) -> str:
        """Write the table (CSV, or TSV for a ``.tsv`` name) atomically with a header; returns the path."""
        from .outputs import write_rows

        return write_rows(path, self.rows(), COLUMNS, {**(about or {}), **self.about()})


def find_peaks(heat: np.ndarray, affine: np.ndarray, threshold: float | None = None,
               labels: np.ndarray | None = None, names: dict[int, str] | None = None,
               min_voxels: int = DEFAULT_MIN_VOXELS, world: np.ndarray | None = None,
               space: str = "scanner") -> PeakTable:
    """Clusters of ``heat`` above ``threshold`` (default: half the map's maximum), largest peak first.

    heat: (X, Y, Z); affine: (4, 4) voxel -> millimetres; labels: (X, Y, Z) integers on the same
    voxels; names: label value -> name; world: (4, 4) voxel -> viewer world (for ``Peak.world``).
    """
    from scipy import ndimage

    heat = np.asarray(heat, dtype=np.float64)
    if heat.ndim != 3:
        raise ValueError(f"peaks are found in a 3D map; this one is {heat.ndim}D")
    if labels is not None and np.shape(labels) != heat.shape:
        raise ValueError(f"the labels ({'x'.join(map(str, np.shape(labels)))}) are not on the map's voxels "
                         f"({'x'.join(map(str, heat.shape))})")
    finite = np.isfinite(heat)
    top = float(heat[finite].max()) if finite.any() else 0.0
    if threshold is None:
        threshold = top / 2
    threshold = float(threshold)
    inside = finite & (heat > threshold)
    clusters, count = ndimage.label(inside, structure=np.ones((3, 3, 3), dtype=bool))
    if not count:
        return PeakTable((), threshold, int(min_voxels), space)
    where = np.flatnonzero(clusters)
    ids = clusters.ravel()[where]
    values = heat.ravel()[where]
    sizes = np.bincount(ids, minlength=count + 1)
    sums = np.bincount(ids, weights=values, minlength=count + 1)
    order = np.lexsort((-values, ids))  # by cluster, hottest first
    first = order[np.r_[0, np.flatnonzero(np.diff(ids[order])) + 1]]
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))
    found = []
    for flat_index in first:
        cluster = int(ids[flat_index])
        if sizes[cluster] < min_voxels:
            continue
        index = np.unravel_index(where[flat_index], heat.shape)
        point = np.asarray(affine, dtype=float) @ np.array([*index, 1.0])
        label = None
        if labels is not None:
            value = int(np.asarray(labels)[index])
            if value != 0 or (names and 0 in names):
                label = (names or {}).get(value, str(value))
        at_world = None
        if world is not None:
            at_world = tuple(float(v) for v in (np.asarray(world, dtype=float) @ np.array([*index, 1.0]))[:3])
        found.append(Peak(peak_mm=tuple(float(v) for v in point[:3]), peak=float(values[flat_index]),
                          voxels=int(sizes[cluster]), volume_mm3=float(sizes[cluster]) * voxel_mm3,
                          mean=float(sums[cluster] / sizes[cluster]), label=label,
                          voxel=tuple(int(i) for i in index), world=at_world))
    found.sort(key=lambda p: -p.peak)
    return PeakTable(tuple(found), threshold, int(min_voxels), space)


# -- napari layers and arrays -------------------------------------------------------------------------

def _scanner_affine(layer, spatial_shape: tuple[int, ...], to_world: np.ndarray) -> tuple[np.ndarray, str]:
    """The exact voxel -> scanner mm map of a layer read from NIfTI (its canonical affine), else its
    world transform; and the space's name."""
    from .volumes import space_name

    facts = (getattr(layer, "metadata", None) or {}).get("nifti") or {}
    canonical = facts.get("canonical_affine")
    if canonical is not None and tuple(facts.get("shape", ())[:3]) == tuple(spatial_shape):
        return np.asarray(canonical, dtype=float), space_name(facts)
    return to_world, space_name(facts) if facts else "world"


def peaks(heat, threshold: float | None = None, labels=None, min_voxels: int = DEFAULT_MIN_VOXELS, *,
          affine=None, labels_affine=None, names: dict[int, str] | None = None,
          timepoint: int | None = None) -> PeakTable:
    """The heat's clusters, largest peak first, each with ``peak_mm``, ``peak``, ``voxels``,
    ``volume_mm3``, ``mean`` and ``label``.

    heat: a napari Image layer (a heatmap; 3D, or 4D with ``timepoint``) or an array (X, Y, Z)
    with ``affine`` (4, 4, voxel -> mm; default: 1 mm voxels at the origin).
    threshold: voxels with heat above it form clusters; default: half the map's maximum.
    labels: a napari Labels layer on any grid in the same world space (names from its features),
    or an integer array with ``labels_affine`` (default: the heat's affine); names: value -> name.
    """
    from .runner import data_to_world_matrix, labels_on_grid, spatial_matrix

    is_layer = hasattr(heat, "data") and hasattr(heat, "data_to_world")
    if is_layer:
        data = np.asarray(heat.data)
        if data.ndim == 4:
            if timepoint is None:
                raise ValueError(f"'{heat.name}' is a series; say which timepoint: peaks(layer, timepoint=...)")
            data = data[int(timepoint)]
        if data.ndim != 3:
            raise ValueError(f"'{heat.name}' is {data.ndim}D; peaks are found in a 3D map")
        world = spatial_matrix(data_to_world_matrix(heat))
        mm, space = _scanner_affine(heat, data.shape, world)
    else:
        data = np.asarray(heat)
        if data.ndim == 4 and timepoint is not None:
            data = data[int(timepoint)]
        mm = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
        world, space = mm, "scanner" if affine is not None else "voxel"
    on_grid = None
    if labels is not None:
        if hasattr(labels, "data") and hasattr(labels, "data_to_world"):
            from .labelnames import names_of_layer

            names = names if names is not None else names_of_layer(labels)
            values = np.asarray(labels.data)
            labels_world = spatial_matrix(data_to_world_matrix(labels))
        else:
            values = np.asarray(labels)
            labels_world = world if labels_affine is None else np.asarray(labels_affine, dtype=float)
        if values.ndim != 3:
            raise ValueError(f"the labels are {values.ndim}D; give a 3D label volume")
        on_grid = values
        if values.shape != data.shape or not np.allclose(labels_world, world):
            on_grid = labels_on_grid(values, labels_world, data.shape, world)
    return find_peaks(data, mm, threshold=threshold, labels=on_grid, names=names, min_voxels=min_voxels,
                      world=world if is_layer else None, space=space)
