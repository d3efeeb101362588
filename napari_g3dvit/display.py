"""Show RAS+ volumes the way neuroimaging viewers do, through napari's view settings only.

The NIfTI reader gives arrays in RAS+ order (axis x: left -> right, y: posterior -> anterior,
z: inferior -> superior, time first in a 4D series) with scale and translate in scanner
millimetres. napari's default 2D view puts the last axis across and the second-last downwards,
so a brain appears rotated. :func:`neuro_view` changes only ``dims.order``, the camera
orientation and the axis labels: world coordinates stay the scanner's millimetres.

The convention is the neurological one (nilearn, FSLeyes): axial slices with anterior at the
top and the subject's left on the screen's left, coronal and sagittal slices with superior at
the top. In 3D the depth direction is chosen so that x, y, z stay a right-handed system on
screen, like RAS, so the rendered volume is never mirrored.

This module does not import Qt, and imports napari only when it is already loaded.
"""

from __future__ import annotations

import logging
import sys
import weakref

log = logging.getLogger("napari_g3dvit")

PLANES = ("axial", "coronal", "sagittal")
SPATIAL_LABELS = ("x (L→R, mm)", "y (P→A, mm)", "z (I→S, mm)")
TIME_LABEL = "time (s)"

# For each plane, the RAS axes (0 = x, 1 = y, 2 = z) as (sliced or depth, rows, columns) and the
# depth direction that keeps (x, y, z) right-handed when rows point up and columns right.
_LAYOUT = {
    "axial": ((2, 1, 0), "towards"),  # looking down from above: z towards the viewer
    "coronal": ((1, 2, 0), "away"),  # looking from behind: y (anterior) away from the viewer
    "sagittal": ((0, 2, 1), "towards"),  # looking at the right side: x towards the viewer
}
_watched: weakref.WeakSet = weakref.WeakSet()


def camera(viewer):
    """``viewer.scene.camera`` (napari >= 0.9), else the older ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def neuro_view(viewer, plane: str = "axial") -> None:
    """Display ``plane`` of the viewer's last three (RAS+) axes in neurological orientation.

    Axial shows rows y and columns x (z sliced), coronal rows z and columns x (y sliced), sagittal
    rows z and columns y (x sliced), always with the vertical axis pointing up and the horizontal
    one right. Leading axes (time, ...) stay first in ``dims.order``; the axis just before the
    spatial ones is labelled as time. Ends with ``viewer.reset_view()``.
    """
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
    ndim = viewer.dims.ndim
    if ndim < 3:
        raise ValueError(f"neuro_view needs a viewer with at least 3 dimensions (x, y, z), it has {ndim}")
    lead = ndim - 3
    axes, depth = _LAYOUT[plane]
    viewer.dims.order = tuple(range(lead)) + tuple(lead + axis for axis in axes)
    camera(viewer).orientation = (depth, "up", "right")
    labels = list(viewer.dims.axis_labels)
    labels[lead:] = SPATIAL_LABELS
    if lead:
        labels[lead - 1] = TIME_LABEL
    viewer.dims.axis_labels = tuple(labels)
    viewer.reset_view()


def _is_nifti_volume(layer) -> bool:
    return "nifti" in getattr(layer, "metadata", {}) and layer.ndim in (3, 4)


def watch_viewer(viewer) -> None:
    """Apply ``neuro_view(viewer, "axial")`` once, when the first NIfTI layer enters ``viewer``.

    A NIfTI layer is one with ``metadata["nifti"]`` and 3 or 4 dimensions. Calling this again on
    the same viewer does nothing, and after the view has been set once it is never set again, so
    the user's later choices stay. A viewer that already holds a NIfTI layer is left as it is.
    """
    if viewer in _watched:
        return
    _watched.add(viewer)
    if any(_is_nifti_volume(layer) for layer in viewer.layers):
        return
    viewer_ref = weakref.ref(viewer)  # the layer list's emitter must not keep the viewer alive

    def on_inserted(event) -> None:
        target = viewer_ref()
        if target is None or not _is_nifti_volume(event.value):
            return
        target.layers.events.inserted.disconnect(on_inserted)
        if target.dims.ndim >= 3:
            neuro_view(target, "axial")

    # After napari's own handler, which updates dims and resets the view for a first layer.
    viewer.layers.events.inserted.connect(on_inserted, position="last")


def watch_current_viewer() -> None:
    """:func:`watch_viewer` on ``napari.current_viewer()``, if napari is loaded and has one.

    Readers and sample-data functions call this before returning layers. It never imports
    napari itself and never raises: a failure is logged at debug level.
    """
    napari = sys.modules.get("napari")
    if napari is None:
        return
    try:
        viewer = napari.current_viewer()
        if viewer is not None:
            watch_viewer(viewer)
    except Exception as err:  # noqa: BLE001 - reading a file must not fail because of the view
        log.debug("could not watch the current napari viewer: %s", err)
