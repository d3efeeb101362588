"""A view you can hand to a colleague: a small JSON file naming each layer's file and how it is shown.

``save_view(viewer, "case12.json")`` writes, for every Image and Labels layer from the bottom of
the layer list up: its name, kind, source file (relative to the view file), colormap, contrast
limits, gamma, opacity, blending, rendering, visibility, scale, translate, Labels features and
colours, and the napari-g3dvit records in its metadata (what a heatmap is); then the slice
position in world coordinates (``dims.point``), the axis order, 2D/3D and the camera. A layer
without a file of its own (a heatmap, edited labels, a layer made in Python, a shipped sample
inside the installed package) is written as NIfTI beside the view file first, atomically, with its
source file's affine when it has one. Send the folder; ``open_view(viewer, path)`` opens it
anywhere. A missing file is named in the returned report and the other layers still open.
This module imports neither Qt nor napari at import time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .outputs import is_in_package, json_default, safe_name
from .runner import MODEL_KEY, RESULT_KEY

FORMAT = "napari-g3dvit view"
VERSION = 1
#: metadata kept in a view file (JSON-able records); the NIfTI facts come back from the file itself
KEPT_METADATA = (RESULT_KEY, "label_names", MODEL_KEY)
#: layers with this metadata key are drawn by a tool (the orthogonal views' crosshair): not saved
TOOL_KEY = "g3dvit_tool"
#: arrays larger than this are trusted to match their file rather than read back to compare
MAX_COMPARED = 50_000_000


@dataclass
class OpenReport:
    """What ``open_view`` opened, and what it could not (one message per missing layer)."""

    path: str
    opened: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"opened {len(self.opened)} layers from {Path(self.path).name}"
        if self.missing:
            text += "; not found: " + "; ".join(self.missing)
        return text


def _json(value):
    """numpy values and paths as JSON; anything else a view holds as its text."""
    try:
        return json_default(value)
    except TypeError:
        return str(value)


def _kind(layer) -> str | None:
    from napari.layers import Image, Labels

    if isinstance(layer, Labels):
        return "labels"
    if isinstance(layer, Image) and not layer.rgb:
        return "image"
    return None


def _nifti_name(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _own_file(layer, kind: str) -> Path | None:
    """The NIfTI file holding exactly this layer's data, if there is one a colleague can get."""
    from .volumes import read_nifti

    if RESULT_KEY in layer.metadata:  # its nifti facts are those of the volume it explains
        return None
    candidates = [getattr(layer.source, "path", None), (layer.metadata.get("nifti") or {}).get("path")]
    for candidate in candidates:
        if not candidate or not _nifti_name(candidate) or not Path(candidate).is_file() or is_in_package(candidate):
            continue
        data = np.asarray(layer.data) if np.asarray(layer.data).size <= MAX_COMPARED else None
        if data is not None:
            try:
                stored = read_nifti(candidate, kind=kind)[0]
            except Exception:  # noqa: BLE001 - an unreadable file is no source: write the layer instead
                continue
            if stored.shape != data.shape or not np.array_equal(stored, data):
                continue  # edited since it was read (painted labels): written beside the view
        return Path(candidate).resolve()
    return None


def _colormap(layer, kind: str):
    if kind == "labels":
        colors = getattr(layer.colormap, "color_dict", None)
        if not colors:
            return None
        return {"direct": {("null" if key is None else str(key)): [float(c) for c in np.asarray(rgba).ravel()]
                           for key, rgba in colors.items()}}
    from napari.utils.colormaps import AVAILABLE_COLORMAPS

    from .heatstyle import NAME_2D, NAME_3D

    name = layer.colormap.name
    if name in AVAILABLE_COLORMAPS or name in (NAME_2D, NAME_3D):
        return {"name": name}
    return {"name": name, "colors": np.asarray(layer.colormap.colors).tolist(),
            "controls": np.asarray(layer.colormap.controls).tolist()}


def _layer_entry(layer, kind: str, folder: Path, stem: str, used: set[str]) -> dict:
    from .volumes import write_nifti

    source = _own_file(layer, kind)
    written = source is None
    if written:
        name = f"{stem}_{safe_name(layer.name)}"
        while name in used:
            name += "_"
        used.add(name)
        source = folder / f"{name}.nii.gz"
        write_nifti(source, np.asarray(layer.data), layer.metadata, scale=layer.scale, translate=layer.translate)
    entry = {
        "name": layer.name, "kind": kind, "source": Path(os.path.relpath(source, folder)).as_posix(),
        "written_for_this_view": written, "visible": bool(layer.visible), "opacity": float(layer.opacity),
        "blending": str(layer.blending), "scale": [float(v) for v in layer.scale],
        "translate": [float(v) for v in layer.translate],
        "metadata": {key: layer.metadata[key] for key in KEPT_METADATA if key in layer.metadata},
    }
    colormap = _colormap(layer, kind)
    if colormap is not None:
        entry["colormap"] = colormap
    if kind == "image":
        entry.update(contrast_limits=[float(v) for v in layer.contrast_limits], gamma=float(layer.gamma),
                     rendering=str(layer.rendering))
    else:
        features = layer.features
        if len(features.columns):
            entry["features"] = {str(col): [_plain(v) for v in features[col]] for col in features.columns}
    return entry


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def save_view(viewer, path: str | os.PathLike) -> str:
    """Write ``viewer``'s Image and Labels layers and its view to ``path`` (JSON); returns the path.

    Layers without a file of their own are written as NIfTI beside it first
    (``<view name>_<layer name>.nii.gz``). Other layer kinds (points, shapes, ...) are listed under
    ``skipped``.
    """
    from .atomic import write_atomic
    from .display import camera

    path = Path(path).expanduser()
    if path.suffix.lower() != ".json":
        raise ValueError(f"{path.name}: a view file ends with .json")
    folder = path.parent.resolve()
    if not folder.is_dir():
        raise ValueError(f"the folder {folder} does not exist")
    stem = safe_name(path.stem)
    layers, skipped, used = [], [], set()
    for layer in viewer.layers:
        kind = _kind(layer)
        if TOOL_KEY in layer.metadata:
            continue
        if kind is None:
            skipped.append(layer.name)
            continue
        layers.append(_layer_entry(layer, kind, folder, stem, used))
    cam = camera(viewer)
    view = {
        "format": FORMAT, "version": VERSION, "layers": layers, "skipped": skipped,
        "dims": {"point": [float(v) for v in viewer.dims.point], "order": [int(v) for v in viewer.dims.order],
                 "ndisplay": int(viewer.dims.ndisplay)},
        "camera": {"center": [float(v) for v in cam.center], "zoom": float(cam.zoom),
                   "angles": [float(v) for v in cam.angles], "perspective": float(cam.perspective)},
    }
    text = json.dumps(view, indent=1, default=_json) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return str(path)


def _read(path: Path) -> dict:
    try:
        view = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path.name} is not a view file (not JSON: {err})") from None
    if not isinstance(view, dict) or view.get("format") != FORMAT or not isinstance(view.get("layers"), list):
        raise ValueError(f"{path.name} is not a napari-g3dvit view file")
    if int(view.get("version", 0)) > VERSION:
        raise ValueError(f"{path.name} was written by a newer napari-g3dvit (view version {view['version']})")
    return view


def _restore_colormap(spec: dict | None, kind: str):
    if not spec:
        return None
    if kind == "labels":
        direct = spec.get("direct") or {}
        return {(None if key == "null" else int(key)): tuple(rgba) for key, rgba in direct.items()}
    from .heatstyle import NAME_2D, NAME_3D, colormap_2d, colormap_3d

    if spec.get("name") == NAME_2D:
        return colormap_2d()
    if spec.get("name") == NAME_3D:
        return colormap_3d()
    if "colors" in spec:
        from napari.utils.colormaps import Colormap

        return Colormap(np.asarray(spec["colors"]), controls=np.asarray(spec["controls"]), name=spec["name"])
    return spec.get("name")


def _layer_kwargs(entry: dict, read_kwargs: dict) -> dict:
    kwargs = dict(read_kwargs)
    kwargs["name"] = entry.get("name", kwargs.get("name"))
    metadata = dict(kwargs.get("metadata") or {})
    metadata.update(entry.get("metadata") or {})
    kwargs["metadata"] = metadata
    for key in ("visible", "opacity", "blending", "scale", "translate", "contrast_limits", "gamma", "rendering",
                "features"):
        if key in entry:
            kwargs[key] = entry[key]
    colormap = _restore_colormap(entry.get("colormap"), entry.get("kind", "image"))
    if colormap is not None:
        kwargs["colormap"] = colormap
    if entry.get("kind") == "labels":
        for key in ("contrast_limits", "gamma", "rendering", "attenuation"):
            kwargs.pop(key, None)
    return kwargs


def open_view(viewer, path: str | os.PathLike) -> OpenReport:
    """Add the layers of a view file to ``viewer`` and show its slice, axis order, 2D/3D and camera.

    Layer files are found relative to the view file. A missing or unreadable file is named in the
    report (``report.missing``); the other layers open all the same.
    """
    from .display import camera
    from .errors import NiftiError
    from .volumes import read_nifti

    path = Path(path).expanduser()
    view = _read(path)
    folder = path.resolve().parent
    report = OpenReport(path=str(path))
    for entry in view["layers"]:
        name = entry.get("name", "?")
        source = folder / str(entry.get("source", ""))
        if not entry.get("source") or not source.is_file():
            report.missing.append(f"layer '{name}': {entry.get('source') or 'no file named'} is not there")
            continue
        kind = "labels" if entry.get("kind") == "labels" else "image"
        try:
            data, read_kwargs, _ = read_nifti(source, kind=kind)
        except NiftiError as err:
            report.missing.append(f"layer '{name}': {err}")
            continue
        kwargs = _layer_kwargs(entry, read_kwargs)
        if kind == "labels":
            viewer.add_labels(data, **kwargs)
        else:
            viewer.add_image(data, **kwargs)
        report.opened.append(name)
    dims = view.get("dims") or {}
    if report.opened:
        if dims.get("ndisplay") in (2, 3):
            viewer.dims.ndisplay = int(dims["ndisplay"])
        order = dims.get("order") or []
        if sorted(order) == list(range(viewer.dims.ndim)):
            viewer.dims.order = tuple(order)
        point = dims.get("point") or []
        if len(point) == viewer.dims.ndim:
            viewer.dims.point = tuple(float(v) for v in point)
        cam, saved = camera(viewer), view.get("camera") or {}
        for key in ("center", "angles"):
            if key in saved:
                setattr(cam, key, tuple(float(v) for v in saved[key]))
        for key in ("zoom", "perspective"):
            if key in saved:
                setattr(cam, key, float(saved[key]))
    return report
