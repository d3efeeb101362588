"""Outputs that appear whole or not at all: heatmaps streamed to NIfTI, sidecars, tables.

A 4D map is written one timepoint at a time (NIfTI stores time as its slowest axis), so writing
a run never holds more than one chunk of it in memory. Every file goes to a temporary name
beside its target and is renamed when complete (``napari_g3dvit.atomic``); the files of one
output (map, tables, sidecar) are staged first and renamed together (``atomic.commit``), so an
output is complete or untouched. ``MapStream`` writes a map while its run is still being
explained: frames go to a compressing thread, so compression overlaps the next chunk's work.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..atomic import write_atomic
from ..outputs import json_default

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


class MapStream:
    """A map written frame by frame into a hidden temporary file beside ``target``.

    ``put`` hands a block of frames ((C, X, Y, Z) in the source's stored voxel order) to a
    compressing thread (zlib works without the interpreter lock, so it runs beside the model);
    ``close`` waits for it and returns the sealed temporary file, ready for ``atomic.commit``;
    ``discard`` removes it. Any write error comes out of ``put`` or ``close``.
    """

    def __init__(self, target: Path, source, shape: tuple[int, ...]):
        import queue
        import threading

        from ..atomic import temporary_beside

        self.target, self.shape = Path(target), tuple(shape)
        self.expected = int(np.prod(shape[3:])) if len(shape) == 4 else 1
        self.written = 0
        self.busy_s = 0.0  # seconds the compressing thread worked
        self.tmp = temporary_beside(self.target)
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._fh = gzip.GzipFile(self.tmp, "wb", compresslevel=1, mtime=0)
        self._fh.write(map_header(source, self.shape).binaryblock)
        self._fh.write(b"\0" * (_DATA_OFFSET - _HEADER_BYTES))
        self._thread = threading.Thread(target=self._drain, name=f"write {self.target.name}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        import time

        while True:
            block = self._queue.get()
            if block is None:
                return
            if self._error is None:
                start = time.perf_counter()
                try:
                    for frame in block:
                        self._fh.write(np.asarray(frame, dtype="<f4").tobytes(order="F"))
                except BaseException as err:  # a full disk: kept for the caller
                    self._error = err
                self.busy_s += time.perf_counter() - start

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.shape[1:] != self.shape[:3]:
            raise ValueError(f"map frames are {frames.shape[1:]}, expected {self.shape[:3]}")
        self._raise()
        self._queue.put(frames)
        self.written += len(frames)

    def close(self) -> Path:
        """Finish the file; returns the temporary path (sealed) to commit over ``target``."""
        from ..atomic import seal

        self._queue.put(None)
        self._thread.join()
        try:
            self._raise()
            self._fh.close()
            if self.written != self.expected:
                raise ValueError(f"{self.written} timepoints were written for a map of {self.expected}")
            seal(self.tmp, self.target)
        except BaseException:
            self.discard()
            raise
        return self.tmp

    def discard(self) -> None:
        from ..atomic import discard

        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        try:
            self._fh.close()
        except OSError:
            pass
        discard([self.tmp])


def write_map(target: Path, source, shape: tuple[int, ...], frames: Iterable[np.ndarray]) -> None:
    """Write a map to ``target`` (.nii.gz) atomically, frame by frame.

    frames: (X, Y, Z) arrays in the source's stored voxel order, one per timepoint (one for 3D).
    """
    from ..atomic import commit

    stream = MapStream(target, source, shape)
    try:
        for frame in frames:
            stream.put(np.asarray(frame)[None])
    except BaseException:
        stream.discard()
        raise
    commit([(stream.close(), Path(target))])


def json_writer(obj: dict):
    """A writer (for ``atomic.stage``) of ``obj`` as indented JSON."""
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, default=json_default) + "\n")

    return write


def table_writer(rows: Sequence[dict], columns: Sequence[str]):
    """A writer (for ``atomic.stage``) of a tab-separated table (BIDS: ``n/a`` for missing values)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), delimiter="\t", restval="n/a",
                                    extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("n/a" if v is None else _cell(v)) for k, v in row.items()})

    return write


def write_json(target: Path, obj: dict) -> None:
    write_atomic(Path(target), json_writer(obj))


def write_table(target: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """A tab-separated table (BIDS: ``n/a`` for missing values), written atomically."""
    write_atomic(Path(target), table_writer(rows, columns))


def informative(columns: Sequence[str], rows: Sequence[dict], keep: Sequence[str] = ()) -> list[str]:
    """The columns that hold a value in some row (a column of ``n/a`` only says nothing)."""
    return [c for c in columns if c in keep or any(row.get(c) not in (None, "n/a", "") for row in rows)]


def read_table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


