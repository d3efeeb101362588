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
#: (axis, direction) of the three RAS+ axes; slider labels read "x = -12.0 mm (L→R) · slice"
SPATIAL_AXES = (("x", "L→R"), ("y", "P→A"), ("z", "I→S"))

# For each plane, the RAS axes (0 = x, 1 = y, 2 = z) as (sliced or depth, rows, columns) and the
# depth direction that keeps (x, y, z) right-handed when rows point up and columns right.
LAYOUT = {
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
    spatial ones is labelled as time. The sliders are labelled with their world values
    (``label_sliders``). Ends with ``viewer.reset_view()``.
    """
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
    ndim = viewer.dims.ndim
    if ndim < 3:
        raise ValueError(f"neuro_view needs a viewer with at least 3 dimensions (x, y, z), it has {ndim}")
    lead = ndim - 3
    axes, depth = LAYOUT[plane]
    viewer.dims.order = tuple(range(lead)) + tuple(lead + axis for axis in axes)
    camera(viewer).orientation = (depth, "up", "right")
    label_sliders(viewer)
    viewer.reset_view()


def slider_labels(point, ndim: int) -> list[str | None]:
    """Axis labels that say the world value of each slider: "z = 7.0 mm (I→S) · slice" beside the
    slice index napari shows, "time = 34 s · volume" beside the volume index; None for axes before
    time. point: the viewer's ``dims.point`` (world coordinates, RAS+ mm last, time before them)."""
    labels: list[str | None] = [None] * ndim
    for (name, direction), axis in zip(SPATIAL_AXES, range(ndim - 3, ndim)):
        labels[axis] = f"{name} = {float(point[axis]):.1f} mm ({direction}) · slice"
    if ndim > 3:
        labels[ndim - 4] = f"time = {float(point[ndim - 4]):g} s · volume"
    return labels


def label_sliders(viewer) -> None:
    """Label ``viewer``'s sliders with their world values (``slider_labels``), and keep them so as
    the slices move. A label the user has typed over is left alone."""
    state = _slider_state.get(viewer)
    if state is None:
        state = _slider_state[viewer] = {"set": {}}
        viewer_ref = weakref.ref(viewer)

        def on_point(_event=None) -> None:
            target = viewer_ref()
            if target is not None:
                _update_slider_labels(target, _slider_state[target])

        viewer.dims.events.point.connect(on_point)
        viewer.dims.events.ndim.connect(on_point)
    state["set"] = {}  # (re)claim every axis: neuro_view sets the labels afresh
    _update_slider_labels(viewer, state, claim=True)


def _update_slider_labels(viewer, state: dict, claim: bool = False) -> None:
    ndim = viewer.dims.ndim
    if ndim < 3:
        return
    wanted = slider_labels(viewer.dims.point, ndim)
    labels = list(viewer.dims.axis_labels)
    changed = False
    for axis, label in enumerate(wanted):
        if label is None:
            continue
        ours = state["set"].get(axis)
        if claim or ours is None and not _is_custom(labels[axis], axis) or labels[axis] == ours:
            if labels[axis] != label:
                labels[axis] = label
                changed = True
            state["set"][axis] = label
    if changed:
        viewer.dims.axis_labels = tuple(labels)


def _is_custom(label: str, axis: int) -> bool:
    """A label a person typed (not napari's default "0", "1", ... nor one of ours)."""
    return not (label == str(axis) or " mm (" in label or label.startswith("time = "))


_slider_state: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _is_nifti_volume(layer) -> bool:
    return "nifti" in getattr(layer, "metadata", {}) and layer.ndim in (3, 4)


def watch_viewer(viewer) -> None:
    """Apply ``neuro_view(viewer, "axial")`` once, when the first NIfTI layer enters ``viewer``, and
    show millimetres, label names and heat under the cursor in its status bar (``readout``).

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
        from .readout import install

        install(target)  # the status bar says mm, labels and heat under the cursor

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
