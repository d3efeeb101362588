"""Which way the voxels run: a volume reoriented for a model, and its map brought back.

A model was trained on arrays in one orientation: often what ``nib.load(f).get_fdata()`` gives,
the file's *stored* orientation (LAS for FSL's and SPM's MNI files), or a canonical RAS copy.
napari shows every NIfTI volume reoriented to RAS. A model config therefore names the orientation
of its training arrays in ``input_orientation``: three axis codes such as ``"LAS"`` or ``"RAS"``
(the direction each array axis runs *towards*, as nibabel's ``aff2axcodes``), or ``"stored"``
(each file as it is stored). Volumes are reoriented to it before preprocessing, and maps come
back by the exact inverse (flips and axis permutations only: no resampling).

Arrays here have the three spatial axes last; any leading axis (time) is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORIENTATION_KEY = "input_orientation"
STORED = "stored"
CANONICAL = "RAS"
_PAIRS = ({"L", "R"}, {"A", "P"}, {"S", "I"})


def check_orientation(value) -> str:
    """``value`` as an upper-case axis-code string or ``"stored"``; ValueError in plain words."""
    if isinstance(value, str) and value.strip().lower() == STORED:
        return STORED
    codes = value.strip().upper() if isinstance(value, str) else ""
    axes = sorted(next((i for i, pair in enumerate(_PAIRS) if c in pair), -1) for c in codes)
    if axes != [0, 1, 2]:
        raise ValueError(
            f"input_orientation must be 'stored' or three axis codes with one of L/R, A/P and S/I "
            f"each (e.g. 'RAS', 'LAS', 'LPS'), got {value!r}"
        )
    return codes


def codes_of(matrix) -> str:
    """Axis codes of an array whose voxel-to-world matrix is ``matrix`` (world taken as RAS+ mm).

    matrix: (3, 3) linear part or (4, 4) homogeneous affine.
    """
    import nibabel as nib

    matrix = np.asarray(matrix, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = matrix[:3, :3]
    return "".join(nib.aff2axcodes(affine))


@dataclass(frozen=True)
class Reorientation:
    """Flips and a permutation taking arrays from ``source`` codes to ``target`` codes."""

    source: str
    target: str

    def _ornt(self, forward: bool) -> np.ndarray:
        from nibabel.orientations import axcodes2ornt, ornt_transform

        a, b = (self.source, self.target) if forward else (self.target, self.source)
        return ornt_transform(axcodes2ornt(tuple(a)), axcodes2ornt(tuple(b)))

    @property
    def identity(self) -> bool:
        return self.source == self.target

    def _apply(self, array: np.ndarray, forward: bool) -> np.ndarray:
        from nibabel.orientations import apply_orientation

        if self.identity:
            return array
        lead = array.ndim - 3
        moved = np.moveaxis(array, range(lead), range(-lead, 0)) if lead else array
        out = apply_orientation(moved, self._ornt(forward))
        return np.ascontiguousarray(np.moveaxis(out, range(-lead, 0), range(lead)) if lead else out)

    def to_model(self, array: np.ndarray) -> np.ndarray:
        """(..., X, Y, Z) in ``source`` orientation -> the same voxels in ``target`` orientation."""
        return self._apply(np.asarray(array), True)

    def to_volume(self, array: np.ndarray) -> np.ndarray:
        """The exact inverse of ``to_model`` (a map on the model's grid back onto the volume's)."""
        return self._apply(np.asarray(array), False)


def reorientation_for(volume_codes: str, stored_codes: str | None, wanted: str | None) -> Reorientation:
    """From a volume's orientation to the one a model wants.

    volume_codes: how the given array runs (e.g. "RAS" for a layer read by napari-g3dvit);
    stored_codes: how its source file stores it (needed for ``wanted == "stored"``; None when the
    array has no source file, in which case "stored" means the array as given);
    wanted: the model's ``input_orientation`` (None: the array as given).
    """
    if wanted is None:
        return Reorientation(volume_codes, volume_codes)
    wanted = check_orientation(wanted)
    if wanted == STORED:
        wanted = stored_codes or volume_codes
    return Reorientation(volume_codes, wanted)
