"""Outputs that appear whole or not at all: heatmaps streamed to NIfTI, sidecars, tables.

A 4D map is written one timepoint at a time (NIfTI stores time as its slowest axis), so writing
a run never holds more than one chunk of it in memory. Every file goes to a temporary name
beside its target and is renamed when complete (``napari_g3dvit.atomic``).
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..atomic import write_atomic

#: NIfTI-1 single-file layout: a 348-byte header, 4 bytes of extension flags, then the voxels
_HEADER_BYTES, _DATA_OFFSET = 348, 352


def map_header(source, shape: tuple[int, ...]):
    """A float32 NIfTI-1 header for a map on ``source``'s voxels (same affine, codes, zooms, units).

    source: the input's nibabel image; shape: (X, Y, Z) or (X, Y, Z, T).
    """
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    given = source.header
    zooms = tuple(float(z) for z in given.get_zooms())
    if len(shape) == 4 and len(zooms) == 5:  # (x, y, z, 1, t) sources: time was the fifth axis
        zooms = zooms[:3] + zooms[4:]
    header.set_zooms((zooms + (1.0,) * len(shape))[: len(shape)])
    if hasattr(given, "get_qform"):  # NIfTI: the same forms and codes (the same header space)
        header.set_qform(given.get_qform(), code=int(given["qform_code"]))
        header.set_sform(given.get_sform(), code=int(given["sform_code"]))
    else:
        header.set_qform(source.affine, code=1)
        header.set_sform(source.affine, code=1)
    try:
        header.set_xyzt_units(*given.get_xyzt_units())
    except (AttributeError, TypeError, ValueError):
        header.set_xyzt_units("mm", "sec")
    header["descrip"] = b"napari-g3dvit heatmap"
    header.set_data_offset(_DATA_OFFSET)
    return header


def write_map(target: Path, source, shape: tuple[int, ...], frames: Iterable[np.ndarray]) -> None:
    """Write a map to ``target`` (.nii.gz) atomically, frame by frame.

    frames: (X, Y, Z) arrays in the source's stored voxel order, one per timepoint (one for 3D).
    """
    header = map_header(source, shape)
    expected = int(np.prod(shape[3:])) if len(shape) == 4 else 1

    def write(tmp: Path) -> None:
        written = 0
        with gzip.GzipFile(tmp, "wb", compresslevel=1, mtime=0) as fh:
            fh.write(header.binaryblock)
            fh.write(b"\0" * (_DATA_OFFSET - _HEADER_BYTES))
            for frame in frames:
                frame = np.asarray(frame, dtype="<f4")
                if frame.shape != tuple(shape[:3]):
                    raise ValueError(f"a map frame is {frame.shape}, expected {tuple(shape[:3])}")
                fh.write(frame.tobytes(order="F"))
                written += 1
        if written != expected:
            raise ValueError(f"{written} timepoints were written for a map of {expected}")

    write_atomic(Path(target), write)


def write_json(target: Path, obj: dict) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")

    write_atomic(Path(target), write)


def write_table(target: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """A tab-separated table (BIDS: ``n/a`` for missing values), written atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), delimiter="\t", restval="n/a",
                                    extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("n/a" if v is None else _cell(v)) for k, v in row.items()})

    write_atomic(Path(target), write)


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
