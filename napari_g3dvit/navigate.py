"""Scanner millimetres <-> napari world coordinates, and moving every view to a point.

A layer read from NIfTI is shown axis-aligned with a diagonal scale and translate, which is the
scanner's millimetres exactly unless its affine is oblique; its exact voxel -> mm map is kept in
``metadata["nifti"]["canonical_affine"]``. Going through it keeps a typed coordinate (or a peak's
``peak_mm``) exact for oblique files too. This module imports neither Qt nor napari.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .runner import RESULT_KEY, data_to_world_matrix, spatial_matrix


def reference_layer(viewer):
    """The layer whose file says what the millimetres are: the newest heat layer with a source
    file, else the first layer read from NIfTI; None when no layer came from a file."""
    layers = list(viewer.layers)
    for layer in [*[l for l in layers[::-1] if RESULT_KEY in l.metadata], *layers]:
        facts = layer.metadata.get("nifti") or {}
        if facts.get("canonical_affine") is not None and layer.ndim in (3, 4):
            return layer
    return None


def _voxel_to_mm(layer) -> np.ndarray | None:
    facts = layer.metadata.get("nifti") or {}
    canonical = facts.get("canonical_affine")
    if canonical is None or tuple(facts.get("shape", ())[:3]) != tuple(layer.data.shape[-3:]):
        return None
    return np.asarray(canonical, dtype=float)


def world_to_mm(layer, world_xyz: Sequence[float]) -> np.ndarray:
    """Scanner mm (x, y, z) of a point given in world coordinates (its last three axes)."""
    world_xyz = np.asarray(world_xyz, dtype=float)[-3:]
    to_mm = None if layer is None else _voxel_to_mm(layer)
    if to_mm is None:
        return world_xyz
    voxel = np.linalg.inv(spatial_matrix(data_to_world_matrix(layer))) @ np.array([*world_xyz, 1.0])
    return (to_mm @ voxel)[:3]


def mm_to_world(layer, mm_xyz: Sequence[float]) -> np.ndarray:
    """World coordinates (last three axes) of scanner mm (x, y, z): the inverse of ``world_to_mm``."""
    mm_xyz = np.asarray(mm_xyz, dtype=float)[-3:]
    to_mm = None if layer is None else _voxel_to_mm(layer)
    if to_mm is None:
        return mm_xyz
    voxel = np.linalg.inv(to_mm) @ np.array([*mm_xyz, 1.0])
    return (spatial_matrix(data_to_world_matrix(layer)) @ voxel)[:3]


def parse_mm(text: str) -> tuple[float, float, float]:
    """``"-30, -52.5 48"`` -> (-30.0, -52.5, 48.0); ValueError in plain words otherwise."""
    numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text or "")
    if len(numbers) != 3 or re.sub(r"[-+\d.eE,;\s()\[\]xyzXYZ=mM]", "", text or ""):
        raise ValueError(f"'{text}' is not a point: type three numbers in mm, x y z (e.g. -30, -52, 48)")
    return tuple(float(n) for n in numbers)  # type: ignore[return-value]


def go_to_world(viewer, world_xyz: Sequence[float]) -> tuple[float, ...]:
    """Move the viewer's slices to a world point (its last three axes); returns ``dims.point``.

    Every view that follows ``viewer.dims.point`` (the orthogonal views) follows it there.
    """
    point = list(viewer.dims.point)
    if len(point) < 3:
        raise ValueError("the viewer has fewer than three dimensions; open a volume first")
    point[-3:] = [float(v) for v in world_xyz]
    viewer.dims.point = tuple(point)
    return tuple(viewer.dims.point)


def go_to_mm(viewer, mm_xyz: Sequence[float], layer=None) -> tuple[float, ...]:
    """Move the viewer's slices to scanner mm (x, y, z), through ``layer``'s file (default: the
    reference layer); returns ``dims.point``."""
    layer = layer if layer is not None else reference_layer(viewer)
    return go_to_world(viewer, mm_to_world(layer, mm_xyz))
