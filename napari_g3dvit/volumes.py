"""NIfTI files <-> napari layer data, keeping the scanner's world coordinates.

Reading: the array is reoriented to the closest canonical (RAS+) orientation and shown with a
diagonal scale (voxel sizes, mm) and translate (the canonical origin, mm), so every layer read
this way shares world coordinates. A 4D file gets time on axis 0. The original affine, the
orientation and header facts go to ``metadata["nifti"]``, which is all a writer needs to put
the array back exactly as it was. An oblique affine (rotation beyond a permutation and flips)
cannot be shown exactly by napari's axis-aligned slicing: it is displayed axis-aligned and
logged once; the exact affine stays in the metadata.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NiftiError

log = logging.getLogger("napari_g3dvit")

NIFTI_SUFFIXES = (".nii", ".nii.gz")
METADATA_KEY = "nifti"
#: Integer volumes with at most this many distinct values open as Labels (masks, small atlases);
#: an 8-bit MRI or CT export has far more. Larger atlases are recognised by their file name.
MAX_LABEL_VALUES = 32
LABEL_NAME_HINTS = ("label", "atlas", "mask", "seg", "aseg", "parc", "annot", "roi")
#: A repetition time above this many seconds is taken to be in milliseconds (a common header slip).
MAX_TR_SECONDS = 100.0
_warned_oblique: set[str] = set()


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _obliquity_degrees(affine: np.ndarray) -> float:
    """Largest angle between a voxel axis and its nearest world axis."""
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return float(np.degrees(np.arccos(np.clip(np.abs(axes).max(axis=0), -1, 1))).max())


def _whole_numbers(data: np.ndarray) -> bool:
    return data.dtype.kind in "iub" or (data.dtype.kind == "f" and bool(np.all(np.mod(data, 1) == 0)))


def _is_labels(data: np.ndarray, header, name: str) -> bool:
    """Label intent, a boolean volume, or whole numbers that are few or named like labels.

    Whole numbers stored as floats count (fslmaths and many pipelines write masks as float32);
    a float volume with any fractional value (a probability map, an MRI) stays an image.
    """
    intent = header.get_intent()[0] if hasattr(header, "get_intent") else ""
    if intent == "label" or (data.ndim == 3 and data.dtype.kind == "b"):
        return True
    if data.ndim != 3 or data.dtype.kind not in "iuf" or not _whole_numbers(data):
        return False
    named = any(hint in name.lower() for hint in LABEL_NAME_HINTS)
    return named or len(np.unique(data)) <= MAX_LABEL_VALUES


def _as_label_values(data: np.ndarray) -> np.ndarray:
    """Whole-number data as the smallest integer type that holds it (napari's Labels need integers)."""
    if data.dtype.kind in "iu":
        return np.asarray(data)
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    for dtype in (np.uint8, np.uint16, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return data.astype(dtype)
    raise NiftiError(f"label values up to {high:g} do not fit a 64-bit integer")


def anatomy_display(data: np.ndarray) -> dict[str, Any]:
    """napari Image settings that show an anatomical volume well in 2D and 3D.

    A plain MIP of a T1 is a white blob; attenuated MIP with limits at robust percentiles of the
    non-zero voxels keeps the surface readable and leaves room for a heatmap blended over it.
    """
    sample = np.asarray(data[data.shape[0] // 2] if data.ndim == 4 else data)
    values = sample[np.isfinite(sample) & (sample != 0)]
    low, high = (np.percentile(values, [1.0, 99.5]) if values.size else (0.0, 1.0))
    if not high > low:  # a few distinct values (a synthetic cube): the full range
        finite = sample[np.isfinite(sample)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if not high > low:
        low, high = float(low), float(low) + 1.0
    return {"colormap": "gray", "rendering": "attenuated_mip", "attenuation": 0.5,
            "contrast_limits": [float(low), float(high)]}


def _seconds(zoom: float, time_unit: str) -> float | None:
    """A time zoom in seconds (None when it is no usable repetition time)."""
    factor = {"msec": 1e-3, "usec": 1e-6}.get(time_unit, 1.0)
    value = float(zoom) * factor
    if not (np.isfinite(value) and value > 0):
        return None
    if value > MAX_TR_SECONDS:  # headers often say "sec" for a TR written in milliseconds
        log.info("repetition time %g with time unit %r read as %g ms", zoom, time_unit, zoom)
        value = float(zoom) * 1e-3
    return value


def read_nifti(path: str | os.PathLike, kind: str | None = None) -> tuple[np.ndarray, dict[str, Any], str]:
    """One napari layer data tuple ``(data, kwargs, "image" | "labels")`` for a NIfTI file.

    kind: force "image" or "labels"; None decides from the header, values and file name.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise NiftiError(f"{path.name} is a {type(image).__name__}, not a NIfTI volume")
        canonical = nib.as_closest_canonical(image)
        data = np.asanyarray(canonical.dataobj)
    except NiftiError:
        raise
    except Exception as err:  # nibabel raises many types for broken files
        raise NiftiError(f"{path} is not a readable NIfTI file ({err})") from err
    time_zoom = 3
    if data.ndim == 5 and data.shape[3] == 1:  # some tools write (x, y, z, 1, t)
        data, time_zoom = data[:, :, :, 0], 4
    if data.size == 0:
        raise NiftiError(f"{path.name} holds no voxels: its shape is {'x'.join(map(str, image.shape))}")
    if data.ndim not in (3, 4):
        raise NiftiError(f"{path.name} has {data.ndim} dimensions {data.shape}; napari-g3dvit reads 3D volumes and 4D series")
    affine = canonical.affine
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    degrees = _obliquity_degrees(affine)
    header = image.header
    zooms = [float(z) for z in header.get_zooms()]
    facts = {
        "path": str(path),
        "affine": image.affine.tolist(),
        "canonical_affine": affine.tolist(),
        "orientation": "".join(nib.aff2axcodes(image.affine)),
        "shape": list(image.shape),
        "zooms": zooms,
        "units": list(header.get_xyzt_units()),
        "dtype": str(header.get_data_dtype()),
        "oblique_degrees": round(degrees, 3),
        "time_axis": 0 if data.ndim == 4 else None,
        "tr": (_seconds(zooms[time_zoom], header.get_xyzt_units()[1])
               if data.ndim == 4 and len(zooms) > time_zoom else None),
        "sform_code": int(header["sform_code"]) if "sform_code" in header else 0,
        "qform_code": int(header["qform_code"]) if "qform_code" in header else 0,
        "description": header["descrip"].tobytes().rstrip(b"\0").decode("latin-1", "replace") if "descrip" in header else "",
    }
    if degrees > 1e-3 and str(path) not in _warned_oblique:
        _warned_oblique.add(str(path))
        log.warning("%s has an oblique affine (%.1f degrees off the axes); it is shown axis-aligned, "
                    "and the exact affine is kept in the layer's metadata", path.name, degrees)
    scale, translate = list(voxel), list(affine[:3, 3])
    if data.ndim == 4:  # time first, in seconds when the header gives a repetition time
        data = np.moveaxis(data, -1, 0)
        scale, translate = [facts["tr"] or 1.0] + scale, [0.0] + translate
    name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem
    kind = kind or ("labels" if _is_labels(data, header, name) else "image")
    kwargs = {"name": name, "scale": scale, "translate": translate, "metadata": {METADATA_KEY: facts}}
    if kind == "labels":
        data = _as_label_values(data)
        kwargs.update(_names_beside(path, kwargs["metadata"]))
    else:
        kwargs.update(anatomy_display(data))
    return data, kwargs, kind


def _names_beside(path: Path, metadata: dict) -> dict:
    """Labels layer keyword arguments for the BIDS ``dseg.tsv`` beside a label volume, if any.

    A table that cannot be read is logged and left out: the labels still open, as numbers.
    """
    from .labelnames import METADATA_KEY as NAMES_KEY
    from .labelnames import LabelNamesError, find_dseg, layer_kwargs, read_bids_dseg

    found = find_dseg(path)
    if found is None:
        return {}
    try:
        names = read_bids_dseg(found)
    except LabelNamesError as err:
        log.warning("%s: its label names are not used: %s", path.name, err)
        return {}
    metadata[NAMES_KEY] = {"source": names.source, "kind": names.kind, "note": names.note}
    return layer_kwargs(names)


def space_name(facts: dict | None) -> str:
    """What the world coordinates of a read file are: "MNI152", "template", "Talairach", "aligned" or
    "scanner", from its sform code (else its qform code)."""
    facts = facts or {}
    code = facts.get("sform_code") or facts.get("qform_code") or 0
    return {1: "scanner", 2: "aligned", 3: "Talairach", 4: "MNI152", 5: "template"}.get(int(code), "scanner")


def nifti_from_layer(data: np.ndarray, metadata: dict | None, scale=None, translate=None):
    """A ``Nifti1Image`` of layer data, in the orientation and affine of its source file.

    Without source metadata the affine is built from the layer's scale and translate.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    data = np.asarray(data)
    facts = (metadata or {}).get(METADATA_KEY)
    if facts is None:
        spatial = slice(-3, None)
        affine = np.eye(4)
        if scale is not None:
            affine[:3, :3] = np.diag(np.asarray(scale, dtype=float)[spatial])
        if translate is not None:
            affine[:3, 3] = np.asarray(translate, dtype=float)[spatial]
        out = np.moveaxis(data, 0, -1) if data.ndim == 4 else data
        return nib.Nifti1Image(out, affine)
    original = np.asarray(facts["affine"], dtype=float)
    if data.ndim == 4:
        data = np.moveaxis(data, 0, -1)
    back = ornt_transform(axcodes2ornt("RAS"), io_orientation(original))
    restored = apply_orientation(data, back)
    return nib.Nifti1Image(restored, original)


def write_nifti(path: str | os.PathLike, data: np.ndarray, metadata: dict | None = None,
                scale=None, translate=None) -> str:
    """Write layer data to ``path`` (.nii or .nii.gz); returns the path written."""
    import nibabel as nib

    from .atomic import write_atomic

    path = str(path)
    if not is_nifti_path(path):
        raise NiftiError(f"{Path(path).name}: napari-g3dvit writes .nii or .nii.gz files")
    image = nifti_from_layer(data, metadata, scale, translate)

    def write(tmp: Path) -> None:
        try:
            nib.save(image, str(tmp))
        except OSError:
            raise
        except Exception as err:  # nibabel's own errors for data it cannot store
            raise NiftiError(f"{Path(path).name} cannot be written as NIfTI ({err})") from err

    write_atomic(Path(path), write)  # an existing file is replaced whole, or left as it was
    return path
