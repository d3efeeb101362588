"""The grid a model was trained on (its ``input_space``), and scans on other grids brought into it.

A config records the grid its training arrays were on::

    "input_space": {"affine": [[3, 0, 0, -82], [0, 3, 0, -124], [0, 0, 3, -77], [0, 0, 0, 1]],
                    "shape": [56, 72, 56],                 # voxels (X, Y, Z as the files store them)
                    "template": "MNI152NLin2009cAsym"}     # optional: whose millimetres these are

A scan on the model's own voxels (up to flips and axis order) is used as it is. A scan on any
other grid in the same world space (another voxel size, field of view or orientation: fMRIPrep's
2 mm MNI output for a 3 mm MNI model) is resampled into the model's grid through the exact
voxel-to-voxel affine map (``scipy.ndimage.affine_transform``, the call
``nibabel.processing.resample_from_to`` makes; trilinear by default), explained, and its map is
resampled back onto the scan's voxels the same way. A scan that barely overlaps the model's
field of view (native scanner space against a template) is refused with what to do; nothing here
registers images. Arrays here have their three spatial axes last (time, when present, first).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VolumeError
from ..options import DEFAULT_INTERPOLATION, INTERPOLATIONS

SPACE_KEY = "input_space"
#: a scan must cover at least this share of the model's field of view to be explained
MIN_COVERAGE = 0.5
#: affines that differ by less than this (mm, or unitless in the linear part) are the same grid
_TOLERANCE = 1e-4


class SpaceError(VolumeError):
    """A scan that cannot be put into the model's space (it lies elsewhere in the world)."""


def _mm(values) -> str:
    """Voxel sizes in words: "3 mm" when isotropic, else "2x2x2.2 mm"."""
    values = [float(v) for v in values]
    text = [f"{v:.3g}" for v in values]
    return f"{text[0]} mm" if len(set(text)) == 1 else f"{'x'.join(text)} mm"


def _size(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


@dataclass(frozen=True, eq=False)
class Grid:
    """Voxels placed in the world: ``affine`` (4, 4) voxel -> world (RAS+ mm), ``shape`` (X, Y, Z)."""

    affine: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, affine, shape) -> "Grid":
        affine = np.asarray(affine, dtype=float)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise VolumeError(f"a voxel-to-world affine must be a finite, invertible 4x4 matrix, got {affine.tolist()}")
        return cls(affine=affine, shape=tuple(int(s) for s in shape[:3]))

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def codes(self) -> str:
        from ..orientation import codes_of

        return codes_of(self.affine)

    def extent(self) -> np.ndarray:
        """(3, 2) lowest and highest world coordinate (mm) of the voxel centres."""
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in self.shape], indexing="ij")).reshape(3, -1)
        world = self.affine[:3, :3] @ corners + self.affine[:3, 3:4]
        return np.stack([world.min(axis=1), world.max(axis=1)], axis=1)

    def describe(self) -> str:
        """"84x108x84 voxels of 2 mm, RAS"."""
        return f"{_size(self.shape)} voxels of {_mm(self.voxel_mm)}, {self.codes}"

    def box(self) -> str:
        """The world box of the voxel centres, "x -82..83, y -124..89, z -77..88 mm"."""
        return ", ".join(f"{axis} {low:.0f}..{high:.0f}" for axis, (low, high) in zip("xyz", self.extent())) + " mm"

    def same_as(self, other: "Grid") -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=_TOLERANCE)

    def same_voxels(self, other: "Grid") -> bool:
        """True when ``other`` holds exactly these voxels, perhaps flipped or in another axis order."""
        to_self = np.linalg.solve(self.affine, other.affine)  # other's voxel -> self's voxel
        linear, offset = to_self[:3, :3], to_self[:3, 3]
        rounded = np.round(linear)
        if not np.allclose(linear, rounded, atol=_TOLERANCE) or not np.allclose(offset, np.round(offset), atol=_TOLERANCE):
            return False
        if sorted(np.abs(rounded).sum(axis=0)) != [1, 1, 1] or sorted(np.abs(rounded).sum(axis=1)) != [1, 1, 1]:
            return False
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in other.shape], indexing="ij")).reshape(3, -1)
        mapped = np.round(rounded @ corners + offset[:, None]).astype(int)
        low, high = mapped.min(axis=1), mapped.max(axis=1)
        return bool(np.all(low == 0) and np.all(high == np.array(self.shape) - 1))


@dataclass(frozen=True, eq=False)
class ModelSpace:
    """The grid a model was trained on, and the template whose millimetres it is in (if known)."""

    grid: Grid
    template: str | None = None

    @classmethod
    def from_config(cls, value: Any) -> "ModelSpace":
        """Checked ``input_space``; ValueError names what is wrong in it."""
        if not isinstance(value, dict):
            raise ValueError(f"input_space must be an object with 'affine' and 'shape', got {value!r}")
        unknown = set(value) - {"affine", "shape", "template", "resolution_mm"}
        if unknown:
            raise ValueError(f"input_space has unknown field(s): {', '.join(sorted(unknown))}")
        shape = value.get("shape")
        if (not isinstance(shape, (list, tuple)) or len(shape) != 3
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise ValueError(f"input_space.shape must be three positive whole numbers (X, Y, Z), got {shape!r}")
        try:
            affine = np.asarray(value.get("affine"), dtype=float)
        except (TypeError, ValueError):
            affine = np.zeros(0)
        if affine.shape != (4, 4):
            raise ValueError("input_space.affine must be a 4x4 voxel-to-world matrix (rows of 4 numbers)")
        try:
            grid = Grid.of(affine, shape)
        except VolumeError as err:
            raise ValueError(f"input_space.affine: {err}") from None
        template = value.get("template")
        if template is not None and (not isinstance(template, str) or not template.strip()):
            raise ValueError(f"input_space.template must be a template's name (e.g. 'MNI152NLin2009cAsym'), got {template!r}")
        return cls(grid=grid, template=template.strip() if template else None)

    def to_config(self) -> dict:
        out = {"affine": [[round(float(v), 6) for v in row] for row in self.grid.affine],
               "shape": list(self.grid.shape)}
        if self.template:
            out["template"] = self.template
        out["resolution_mm"] = [round(v, 6) for v in self.grid.voxel_mm]
        return out

    @classmethod
    def of_model(cls, model) -> "ModelSpace | None":
        """The space a loaded model's config records (None when it does not)."""
        value = (getattr(model, "g3dvit_config", None) or {}).get(SPACE_KEY)
        return None if value is None else cls.from_config(value)

    @classmethod
    def from_image(cls, image, template: str | None = None) -> "ModelSpace":
        """The grid of a NIfTI image or file (its first three axes)."""
        image = load_image(image)
        return cls(grid=Grid.of(image.affine, image.shape[:3]), template=template or None)

    def describe(self) -> str:
        """"MNI152NLin2009cAsym at 3 mm: 56x72x56 voxels, RAS" (or the grid alone)."""
        grid = self.grid
        if self.template:
            return f"{self.template} at {_mm(grid.voxel_mm)}: {_size(grid.shape)} voxels, {grid.codes}"
        return grid.describe()


def _check_interpolation(name: str) -> int:
    if name not in INTERPOLATIONS:
        from ..errors import SettingsError

        raise SettingsError(f"unknown interpolation {name!r}; choose one of: {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


@dataclass(frozen=True, eq=False)
class SpacePlan:
    """How one scan's arrays reach the model's grid and its maps come back.

    resample False: the scan is on the model's voxels (or the model's space is unknown) and is
    used as it is (flips and axis order are the orientation step's job).
    """

    scan: Grid
    space: ModelSpace | None
    interpolation: str = DEFAULT_INTERPOLATION
    resample: bool = False
    coverage: float = 1.0

    @property
    def codes(self) -> str:
        """How the arrays ``to_model`` returns run (the model grid's, or the scan's own)."""
        return self.space.grid.codes if self.resample else self.scan.codes

    def _map(self, array: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
        from scipy.ndimage import affine_transform

        array = np.asarray(array)
        # target voxel -> source voxel; rounded so that float noise (-1e-16) does not push a voxel
        # centre lying exactly on the other grid's edge outside it
        matrix = np.round(np.linalg.solve(source.affine, target.affine), 9)
        order = INTERPOLATIONS[self.interpolation]
        lead = array.shape[:-3]
        flat = array.reshape((-1, *array.shape[-3:]))
        out = np.empty((len(flat), *target.shape), dtype=np.float32)
        for i, volume in enumerate(flat):
            out[i] = affine_transform(np.asarray(volume, dtype=np.float32), matrix[:3, :3], matrix[:3, 3],
                                      output_shape=target.shape, order=order, mode="constant", cval=0.0)
        return out.reshape((*lead, *target.shape))

    def to_model(self, array: np.ndarray) -> np.ndarray:
        """(..., X, Y, Z) on the scan's voxels -> (..., Xm, Ym, Zm) on the model's (float32)."""
        if not self.resample:
            return array
        if tuple(np.shape(array)[-3:]) != self.scan.shape:
            raise VolumeError(f"the array is {_size(np.shape(array)[-3:])}, but its grid is {_size(self.scan.shape)}")
        return self._map(array, self.scan, self.space.grid)

    def to_scan(self, maps: np.ndarray) -> np.ndarray:
        """(..., Xm, Ym, Zm) maps on the model's voxels -> (..., X, Y, Z) on the scan's, in [0, 1]."""
        if not self.resample:
            return maps
        return np.clip(self._map(maps, self.space.grid, self.scan), 0.0, 1.0)

    def note(self) -> str:
        """One line for a summary: "resampled from 2 mm to the model's 3 mm grid" (empty when not)."""
        if not self.resample:
            return ""
        grid = self.space.grid
        src, dst = _mm(self.scan.voxel_mm), _mm(grid.voxel_mm)
        where = f" ({self.space.template})" if self.space.template else ""
        if src == dst:
            why = "its field of view" if self.scan.codes == grid.codes else f"{self.scan.codes} to {grid.codes}"
            line = f"resampled onto the model's {dst} grid{where} ({why} differs)"
        else:
            line = f"resampled from {src} to the model's {dst} grid{where}"
        if self.interpolation != DEFAULT_INTERPOLATION:
            line += f", {self.interpolation}"
        if self.coverage < 0.999:
            line += f"; the scan covers {100 * self.coverage:.0f} % of the model's field of view"
        return line

    def record(self) -> dict:
        """What sidecars and layer metadata keep about it."""
        out = {"resampled": self.resample, "interpolation": self.interpolation if self.resample else None,
               "scan": {"shape": list(self.scan.shape), "voxel_mm": [round(v, 6) for v in self.scan.voxel_mm],
                        "orientation": self.scan.codes}}
        if self.space is not None:
            out["model"] = self.space.to_config()
            out["coverage"] = round(self.coverage, 4)
        return out


def coverage(scan: Grid, model: Grid) -> float:
    """Share of the model's voxel centres that fall inside the scan's field of view."""
    to_scan = np.linalg.solve(scan.affine, model.affine)
    rest = np.indices(model.shape[1:]).reshape(2, -1).astype(float)
    inside = 0
    for i in range(model.shape[0]):  # one slab at a time bounds the memory
        points = np.vstack([np.full(rest.shape[1], float(i)), rest])
        voxels = to_scan[:3, :3] @ points + to_scan[:3, 3:4]
        inside += int(np.all((voxels > -0.5) & (voxels < np.array(scan.shape)[:, None] - 0.5), axis=0).sum())
    return inside / float(np.prod(model.shape))


def plan_for(space: ModelSpace | None, affine, shape, interpolation: str = DEFAULT_INTERPOLATION) -> SpacePlan:
    """The plan for a scan on ``(affine, shape)``; SpaceError when it lies outside the model's space.

    affine: (4, 4) voxel -> world of the scan's array; shape: its spatial shape (X, Y, Z).
    """
    _check_interpolation(interpolation)
    scan = Grid.of(affine, shape)
    if space is None or space.grid.same_voxels(scan):
        return SpacePlan(scan=scan, space=space, interpolation=interpolation)
    share = coverage(scan, space.grid)
    if share < MIN_COVERAGE:
        raise SpaceError(outside_message(scan, space, share))
    return SpacePlan(scan=scan, space=space, interpolation=interpolation, resample=True, coverage=share)


def outside_message(scan: Grid, space: ModelSpace, share: float) -> str:
    template = space.template
    register = (f"Register it to {template} first (for example, use fMRIPrep's space-{template} output)"
                if template else "Register it to the model's space first (the grid the model was trained on)")
    return (f"the scan does not lie in the model's space: only {100 * share:.0f} % of the model's field of "
            f"view ({space.describe()}; {space.grid.box()}) falls inside the scan ({scan.describe()}; "
            f"{scan.box()}). Is it in native (scanner) space? {register}; napari-g3dvit resamples between "
            "grids in the same space but does not register images.")


def expected_input(model, volume_shape, model_shape=None, given: str = "volume") -> str:
    """What a model expects, in a neuroscientist's words, and the fix, for a wrong-sized array.

    volume_shape: the spatial shape (X, Y, Z) of the array that does not fit; model_shape: the
    model's input (frames, height, width), when known.
    """
    try:
        space = ModelSpace.of_model(model)
    except ValueError:
        space = None
    config = getattr(model, "g3dvit_config", None) or {}
    orientation = config.get("input_orientation")
    head = f"the {given} is {_size(volume_shape)} voxels"
    if space is not None:
        return (f"{head}, but the model takes {space.describe()} (its config's input_space). Pass the NIfTI "
                "file or nibabel image instead of its array (in napari: open the file with napari-g3dvit's "
                "reader, which keeps its affine), and it is resampled into the model's space; a scan in native "
                f"space must be registered to {space.template or 'the model space'} first"
                + (" (e.g. fMRIPrep's space-" + space.template + " output)" if space.template else ""))
    from .config import input_shape

    shape = model_shape
    if shape is None and config.get("vit"):
        shape = input_shape(config)
    takes = f"{_size(shape)} voxels" if shape else "another grid"
    codes = f" in {orientation} orientation" if orientation and orientation != "stored" else ""
    return (f"{head}, but the model takes {takes}{codes} (after its config's preprocessing); its config does "
            "not record the grid it was trained on (voxel size, field of view, template). Record it with "
            "'g3dvit model set-space CHECKPOINT --like TRAINING_IMAGE.nii.gz' (then any grid in that space is "
            "resampled into it), or set preprocessing crop/resample in the model's config")


# -- NIfTI images as explain's input --------------------------------------------------------------------------

def is_image(volume) -> bool:
    """A NIfTI path or a nibabel image (something with an affine), not an array."""
    if isinstance(volume, (str, os.PathLike)):
        return True
    return hasattr(volume, "affine") and hasattr(volume, "dataobj")


def gzip_hint(path: Path) -> str:
    """Why a NIfTI file name and its bytes disagree, or ""."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except OSError:
        return ""
    name = path.name.lower()
    if magic == b"\x1f\x8b" and not name.endswith(".gz"):
        return f"; {path.name} holds gzip-compressed bytes: rename it to {path.name}.gz"
    if name.endswith(".gz") and magic != b"\x1f\x8b" and magic:
        return f"; {path.name} is not gzip-compressed although its name ends in .gz: rename it to {path.name[:-3]}"
    return ""


def load_image(image):
    """A nibabel NIfTI image from a path or an image; NiftiError in plain words."""
    import nibabel as nib

    from ..errors import NiftiError

    if not isinstance(image, (str, os.PathLike)):
        return image
    path = Path(image)
    if not path.exists():
        raise NiftiError(f"no file {path}" + (" (a link whose target is missing)" if path.is_symlink() else ""))
    try:
        loaded = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for broken files
        raise NiftiError(f"{path} is not a readable NIfTI file ({err}){gzip_hint(path)}") from err
    if not isinstance(loaded, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"{path.name} is a {type(loaded).__name__}, not a NIfTI volume")
    return loaded


def image_series(image) -> tuple[np.ndarray, bool]:
    """The image's voxels as float32 (T, X, Y, Z) in stored order, and whether it was 4D."""
    from ..errors import NiftiError

    shape = tuple(image.shape)
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    if len(shape) not in (3, 4):
        raise NiftiError(f"the image has shape {tuple(image.shape)}; napari-g3dvit explains 3D volumes and 4D series")
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as err:
        raise NiftiError(f"the image's data could not be read ({type(err).__name__}: {err}); the file may be truncated") from err
    if data.ndim == 4:
        return np.ascontiguousarray(np.moveaxis(data, -1, 0)), True
    return data[None], False


def explain_image(explain, model, image, arguments: dict, interpolation: str = DEFAULT_INTERPOLATION):
    """``explain`` of a NIfTI image or file: into the model's space, explained, maps back on its voxels.

    Returns what ``explain`` returns, each map on the image's grid: (X, Y, Z), or (T, X, Y, Z)
    for a 4D image (time first, as for arrays); ``extra["space"]`` records the resampling.
    """
    from dataclasses import replace

    from ..orientation import ORIENTATION_KEY, reorientation_for

    image = load_image(image)
    series, is_series = image_series(image)
    plan = plan_for(ModelSpace.of_model(model), image.affine, series.shape[1:], interpolation)
    config = getattr(model, "g3dvit_config", None) or {}
    stored = plan.codes
    turn = reorientation_for(stored, stored, config.get(ORIENTATION_KEY))
    volume = turn.to_model(plan.to_model(series))
    rest = {k: v for k, v in arguments.items() if k not in ("model", "volume")}
    found = explain(model, volume if is_series else volume[0], **rest)

    def back(exp):
        heat = plan.to_scan(turn.to_volume(exp.heatmap)).astype(np.float32, copy=False)
        record = {**plan.record(), "input_orientation": turn.target, "scan_orientation": plan.scan.codes}
        return replace(exp, heatmap=heat, extra={**exp.extra, "space": record})

    if isinstance(found, dict):
        return {key: back(exp) for key, exp in found.items()}
    return back(found)


def explain_in_space(model, image, interpolation: str = DEFAULT_INTERPOLATION, **settings):
    """``explain(model, image, **settings)`` with another interpolation into and out of the model's
    grid (``"trilinear"`` or ``"nearest"``)."""
    from ..api import explain

    _check_interpolation(interpolation)
    return explain_image(explain, model, image, settings, interpolation)
