"""The "Orthogonal views" dock: the two other planes of the main viewer, linked to it.

napari builds it from Plugins > Orthogonal views. Each view is a napari ``ViewerModel`` shown by a
``napari.qt.QtViewer`` (napari's multiple-viewer example is the pattern), through public napari API
only. Every layer of the main viewer is mirrored in both views (added, removed, reordered; its
colormap, contrast, opacity, blending, visibility, transform and data; Labels edits, which share
the array, in any of the three), and the slice position is one world point for all three: moving
a slider, clicking a plane (a click without a drag) or picking a peak moves the others. A
crosshair (a Vectors layer, hideable like any layer, or with the checkbox) marks the point. A
heatmap drawn for 3D in the main viewer is drawn as its 2D overlay in the views.

The dock cannot float: a floating dock would need OpenGL contexts shared from the start of the
application.
"""

from __future__ import annotations

import logging
import weakref

import napari
import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QCheckBox, QDockWidget, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from ._closing import when_closed
from .display import camera
from .heatstyle import NAME_3D, has_our_look, restyle
from .orthoviews import (
    CROSSHAIR_KEY,
    CROSSHAIR_NAME,
    clicked_point,
    crosshair_vectors,
    other_planes,
)
from .readout import describe_point

log = logging.getLogger("napari_g3dvit")

#: layer events whose property is copied to the mirrors (those a layer has)
MIRRORED = ("visible", "opacity", "blending", "colormap", "contrast_limits", "gamma", "rendering",
            "interpolation2d", "name", "scale", "translate", "rotate", "shear", "affine", "contour",
            "features", "edge_width", "edge_color", "vector_style")
#: Labels events after which every copy is redrawn (the copies share the edited array)
LABEL_EDITS = ("paint", "labels_update")
#: pixels; each view keeps at least this height when other docks share the column
MIN_VIEW_HEIGHT = 220


class _NoFloating(QObject):
    """Keeps a dock docked: no floatable feature, no float button (napari recreates its title bar
    now and then), a double-click on the title does nothing, and a dock floated anyway docks again."""

    def __init__(self, dock: QDockWidget):
        super().__init__(dock)
        dock.setFeatures(dock.features() & ~QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        dock.installEventFilter(self)
        self._guard_title()
        ref = weakref.ref(dock)
        dock.topLevelChanged.connect(lambda floating: floating and ref() is not None and ref().setFloating(False))

    def _guard_title(self) -> None:
        try:
            title = self.parent().titleBarWidget()
        except RuntimeError:  # the dock is gone
            return
        if title is None:
            return
        title.installEventFilter(self)
        for button in title.findChildren(QPushButton):
            if "float" in button.objectName().lower():
                button.hide()

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        kind = event.type()
        if kind == QEvent.Type.ChildAdded and obj is self.parent():  # a new title bar
            QTimer.singleShot(0, self._guard_title)
        elif kind == QEvent.Type.MouseButtonDblClick and obj is not self.parent():
            return True  # a double-click on the title bar would float the dock
        return False


def _raw(layer):
    """The layer itself: napari hands plugins proxies, a new one on every access."""
    return getattr(layer, "__wrapped__", layer)


def _copy(layer):
    from napari.layers import Layer

    return Layer.create(*layer.as_layer_data_tuple())


class OrthoViewsWidget(QWidget):
    """Two more planes of the main viewer, each a napari canvas, linked in world coordinates."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        from napari.components import ViewerModel
        from napari.qt import QtViewer

        self._viewer = napari_viewer
        self._mirrors: dict[int, tuple] = {}  # id(main layer) -> (layer, copy in view 1, copy in view 2)
        self._busy = False  # a change being copied: do not copy it back
        self._closed = False
        self.crosshair = None
        self._stale: list = []  # copies of removed layers, still to leave the views
        self._prune_later = QTimer(self)
        self._prune_later.setSingleShot(True)
        self._prune_later.setInterval(0)
        self._prune_later.timeout.connect(self._prune)
        self._fit_later = QTimer(self)
        self._fit_later.setSingleShot(True)
        self._fit_later.setInterval(0)
        self._fit_later.timeout.connect(self.reset_views)
        self.models = [ViewerModel(title="orthogonal view 1"), ViewerModel(title="orthogonal view 2")]
        self.qt_viewers = [QtViewer(model) for model in self.models]
        self.titles = [QLabel("") for _ in self.models]
        self.show_cross = QCheckBox("crosshair")
        self.show_cross.setChecked(True)
        self.show_cross.setToolTip("Show the crosshair at the current point in every view (also a layer).")
        self.reset_button = QPushButton("Reset views")
        self.reset_button.setToolTip("Fit the whole volume in both views.")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        splitter = QSplitter(Qt.Orientation.Vertical)
        for title, qt_viewer in zip(self.titles, self.qt_viewers):
            pane = QWidget()
            pane_layout = QVBoxLayout(pane)
            pane_layout.setContentsMargins(0, 0, 0, 0)
            pane_layout.addWidget(title)
            pane_layout.addWidget(qt_viewer, stretch=1)
            qt_viewer.setMinimumHeight(MIN_VIEW_HEIGHT)
            qt_viewer.installEventFilter(self)  # a view that changes size is fitted again
            splitter.addWidget(pane)
        layout.addWidget(splitter, stretch=1)
        row = QWidget()
        row_layout = QVBoxLayout(row)
        row_layout.setContentsMargins(4, 0, 4, 4)
        row_layout.addWidget(self.show_cross)
        row_layout.addWidget(self.reset_button)
        layout.addWidget(row)
        self.setMinimumWidth(260)

        for layer in list(napari_viewer.layers):
            self._add(_raw(layer))
        viewer_events = napari_viewer.layers.events
        viewer_events.inserted.connect(self._on_inserted)
        viewer_events.removed.connect(self._on_removed)
        viewer_events.moved.connect(self._on_moved)
        viewer_events.reordered.connect(self._on_moved)
        napari_viewer.dims.events.point.connect(self._on_main_point)
        napari_viewer.dims.events.order.connect(self._on_main_order)
        napari_viewer.dims.events.ndim.connect(self._on_main_order)
        napari_viewer.dims.events.axis_labels.connect(self._on_axis_labels)
        for model in self.models:
            model.dims.events.point.connect(self._on_view_point)
            model.mouse_drag_callbacks.append(self._click_in_view)
            model.cursor.events.position.connect(self._on_view_cursor)
        napari_viewer.mouse_drag_callbacks.append(self._click_in_main)
        napari_viewer.events.reset_view.connect(self.reset_views)
        self.show_cross.toggled.connect(self._on_cross_toggled)
        self.reset_button.clicked.connect(self.reset_views)
        when_closed(self, self._on_close)
        self._ensure_crosshair()
        self._on_main_order()
        self.reset_views()

    # -- the dock ---------------------------------------------------------------------------------------------

    def event(self, event) -> bool:  # noqa: D401 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            self._keep_docked()
        return super().event(event)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Resize and obj in self.qt_viewers:
            self._fit_later.start()  # once the canvases have their new size
        return False

    def _keep_docked(self) -> None:
        dock = self.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if dock is not None and not dock.findChildren(_NoFloating):
            _NoFloating(dock)

    def _on_close(self) -> None:
        """Disconnect from the main viewer and its layers; close the two canvases."""
        if self._closed:
            return
        self._closed = True
        viewer = self._viewer
        events = viewer.layers.events
        for emitter, slot in ((events.inserted, self._on_inserted), (events.removed, self._on_removed),
                              (events.moved, self._on_moved), (events.reordered, self._on_moved),
                              (viewer.dims.events.point, self._on_main_point),
                              (viewer.dims.events.order, self._on_main_order),
                              (viewer.dims.events.ndim, self._on_main_order),
                              (viewer.dims.events.axis_labels, self._on_axis_labels),
                              (viewer.events.reset_view, self.reset_views)):
            emitter.disconnect(slot)
        for callbacks, slot in ((viewer.mouse_drag_callbacks, self._click_in_main),):
            if slot in callbacks:
                callbacks.remove(slot)
        for layer, *_ in list(self._mirrors.values()):
            self._disconnect_layer(layer)
        self._mirrors.clear()
        self._stale = []
        if self.crosshair is not None and self.crosshair in [_raw(layer) for layer in viewer.layers]:
            viewer.layers.remove(self.crosshair)
        self.crosshair = None
        for model in self.models:
            model.layers.clear()
        for qt_viewer in self.qt_viewers:
            try:
                qt_viewer.close()
            except RuntimeError:  # already deleted with the window
                pass

    # -- layers ----------------------------------------------------------------------------------------------

    def _add(self, layer, index: int | None = None) -> None:
        if id(layer) in self._mirrors:
            return
        copies = []
        for model in self.models:
            copy = _copy(layer)
            if has_our_look(layer) and getattr(layer.colormap, "name", "") == NAME_3D:
                restyle(copy, 2)  # the views are 2D: the heat's 2D overlay look
            model.layers.insert(len(model.layers) if index is None else index, copy)
            for name in LABEL_EDITS:
                emitter = getattr(copy.events, name, None)
                if emitter is not None:
                    emitter.connect(self._on_copy_edited)
            copies.append(copy)
        self._mirrors[id(layer)] = (layer, *copies)
        for name in (*MIRRORED, "data", *LABEL_EDITS):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layer_event)

    def _disconnect_layer(self, layer) -> None:
        for name in (*MIRRORED, "data", *LABEL_EDITS):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.disconnect(self._on_layer_event)

    def _on_inserted(self, event) -> None:
        self._add(_raw(event.value), event.index)
        self._sync_order()
        self._on_main_order()
        self._update_crosshair()
        if self.crosshair is not None and _raw(event.value) is not self.crosshair:
            QTimer.singleShot(0, self._crosshair_on_top)  # after napari has finished inserting

    def _crosshair_on_top(self) -> None:
        if self._closed or self.crosshair is None:
            return
        layers = [_raw(layer) for layer in self._viewer.layers]
        if self.crosshair in layers and layers.index(self.crosshair) != len(layers) - 1:
            self._viewer.layers.move(layers.index(self.crosshair), len(layers))

    def _on_removed(self, event) -> None:
        """A layer left the main viewer: its copies leave the views when control returns to the
        event loop, all in one go (napari collects garbage after each removal from a canvas, and
        closing the viewer removes every layer)."""
        layer = _raw(event.value)
        entry = self._mirrors.pop(id(layer), None)
        if entry is None:
            return
        self._disconnect_layer(layer)
        self._stale.extend(entry[1:])
        self._prune_later.start()
        if layer is self.crosshair:  # removed by the user
            self.crosshair = None
            self.show_cross.setChecked(False)
        elif layer.metadata.get(CROSSHAIR_KEY) is None:
            self._update_crosshair()

    def _prune(self) -> None:
        """Remove the copies of removed layers from the views."""
        stale, self._stale = self._stale, []
        if self._closed:
            return
        for model in self.models:
            if not self._mirrors:
                model.layers.clear()
                continue
            for copy in stale:
                if copy in model.layers:
                    model.layers.remove(copy)

    def _on_moved(self, _event=None) -> None:
        self._sync_order()

    def _sync_order(self) -> None:
        """Put the copies in the main viewer's order."""
        order = [self._mirrors[id(_raw(layer))] for layer in self._viewer.layers if id(_raw(layer)) in self._mirrors]
        for view, model in enumerate(self.models, start=1):
            for index, entry in enumerate(order):
                current = model.layers.index(entry[view])
                if current != index:
                    model.layers.move(current, index)

    def copies_of(self, layer) -> tuple:
        """The two views' copies of a main-viewer layer."""
        return self._mirrors[id(_raw(layer))][1:]

    def _on_layer_event(self, event) -> None:
        """A main-viewer layer changed: copy the change to its two copies."""
        if self._busy:
            return
        layer = event.source
        entry = self._mirrors.get(id(layer))
        if entry is None:
            return
        name = event.type
        self._busy = True
        try:
            for copy in entry[1:]:
                if name in LABEL_EDITS:
                    copy.refresh()
                elif name == "data":
                    copy.data = layer.data
                elif name in ("colormap", "blending", "rendering") and has_our_look(layer):
                    restyle(copy, 2)
                elif hasattr(copy, name):
                    setattr(copy, name, getattr(layer, name))
        finally:
            self._busy = False

    def _on_copy_edited(self, event) -> None:
        """Labels painted in a view: redraw the main layer and the other view's copy."""
        if self._busy:
            return
        self._busy = True
        try:
            for layer, *copies in self._mirrors.values():
                if event.source in copies:
                    for other in (layer, *copies):
                        if other is not event.source:
                            other.refresh()
        finally:
            self._busy = False

    # -- the shared point ------------------------------------------------------------------------------------

    def _on_main_order(self, _event=None) -> None:
        """Each view shows one of the two planes the main viewer does not."""
        ndim = self._viewer.dims.ndim
        planes = other_planes(self._viewer.dims.order, ndim)
        neuro = all(not name.startswith("axis") for name, _ in planes)
        for model, title, (name, order) in zip(self.models, self.titles, planes):
            if model.dims.ndim != ndim:
                continue
            if tuple(model.dims.order) != order:
                model.dims.order = order
                if neuro:
                    camera(model).orientation2d = ("up", "right")
                model.reset_view()
            title.setText(name)
        if not planes:
            for title in self.titles:
                title.setText("open a 3D volume")
        self._on_axis_labels()
        self._on_main_point()

    def _on_axis_labels(self, _event=None) -> None:
        for model in self.models:
            if model.dims.ndim == self._viewer.dims.ndim:
                model.dims.axis_labels = tuple(self._viewer.dims.axis_labels)

    def _on_main_point(self, _event=None) -> None:
        if self._busy:
            return
        point = tuple(self._viewer.dims.point)
        self._busy = True
        try:
            for model in self.models:
                if model.dims.ndim == len(point) and tuple(model.dims.point) != point:
                    model.dims.point = point
        finally:
            self._busy = False
        self._update_crosshair()

    def _on_view_point(self, event) -> None:
        """A view's slider moved: the main viewer (and through it the other view) follows."""
        if self._busy:
            return
        point = tuple(event.value)
        if len(point) == self._viewer.dims.ndim and point != tuple(self._viewer.dims.point):
            self._viewer.dims.point = point

    def go_to_click(self, model, position) -> tuple[float, ...]:
        """What a click at world ``position`` in ``model`` (a view or the main viewer) does: move the
        shared point there on the axes it displays; returns the new ``dims.point``."""
        point = clicked_point(self._viewer.dims.point, position, model.dims.displayed)
        self._viewer.dims.point = point
        return tuple(self._viewer.dims.point)

    def _click_in_view(self, model, event):
        """mouse_drag_callback: a click without a drag moves the shared point (a drag pans)."""
        if event.button != 1:
            return
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self.go_to_click(model, event.position)

    def _click_in_main(self, viewer, event):
        """The same in the main viewer, in 2D, when the selected layer is not being edited."""
        active = viewer.layers.selection.active
        if event.button != 1 or viewer.dims.ndisplay != 2 or (active is not None and str(getattr(
                active, "mode", "pan_zoom")) not in ("pan_zoom", "transform")):
            return
        yield from self._click_in_view(viewer, event)

    def _on_view_cursor(self, event) -> None:
        """The cursor over a view: the main status bar says where (mm, labels, heat)."""
        position = getattr(event, "value", None)
        if position is None or self._closed:
            return
        text = describe_point(self._viewer, position)
        if text:
            self._viewer.status = text

    def reset_views(self, _event=None) -> None:
        if self._closed:
            return
        for model in self.models:
            model.reset_view()

    # -- the crosshair ---------------------------------------------------------------------------------------

    def _extent(self):
        """(lower, upper, step): world corners and the finest voxel size of every full-dimensional
        layer but the crosshair, or None."""
        ndim = self._viewer.dims.ndim
        layers = [_raw(layer) for layer in self._viewer.layers
                  if _raw(layer) is not self.crosshair and _raw(layer).ndim == ndim]
        if not layers:
            return None
        lower = np.min([layer.extent.world[0] for layer in layers], axis=0)
        upper = np.max([layer.extent.world[1] for layer in layers], axis=0)
        step = np.min([np.abs(layer.scale) for layer in layers], axis=0)
        return lower, upper, np.where(step > 0, step, 1.0)

    def _ensure_crosshair(self) -> None:
        if self.crosshair is not None or not self.show_cross.isChecked() or self._viewer.dims.ndim < 3:
            return
        extent = self._extent()
        if extent is None:
            return
        from napari.layers import Vectors

        lower, upper, step = extent
        # on the voxel size of the finest layer: the sliders keep their steps
        data = crosshair_vectors(self._viewer.dims.point, lower, upper) / step
        layer = Vectors(data, name=CROSSHAIR_NAME, scale=step, edge_width=0.25, edge_color="#7fdbff",
                        vector_style="line", opacity=0.8, metadata={CROSSHAIR_KEY: "crosshair"})
        self.crosshair = layer
        layer.events.visible.connect(self._on_cross_visible)
        self._viewer.layers.append(layer)

    def _update_crosshair(self) -> None:
        if self.crosshair is None:
            self._ensure_crosshair()
            return
        extent = self._extent()
        if extent is None:
            return
        if self.crosshair.ndim != self._viewer.dims.ndim:  # a series joined: a crosshair with a time axis
            QTimer.singleShot(0, self._rebuild_crosshair)
            return
        lower, upper, step = extent
        if not np.allclose(self.crosshair.scale, step):
            self.crosshair.scale = step
        self.crosshair.data = crosshair_vectors(self._viewer.dims.point, lower, upper) / step

    def _rebuild_crosshair(self) -> None:
        if self._closed or self.crosshair is None or self.crosshair.ndim == self._viewer.dims.ndim:
            return
        old, self.crosshair = self.crosshair, None
        if old in [_raw(layer) for layer in self._viewer.layers]:
            self._viewer.layers.remove(old)
        self._ensure_crosshair()

    def _on_cross_toggled(self, checked: bool) -> None:
        if checked and self.crosshair is None:
            self._ensure_crosshair()
        elif self.crosshair is not None:
            self.crosshair.visible = checked

    def _on_cross_visible(self, event) -> None:
        """The crosshair's eye in the layer list and the checkbox say the same."""
        if event.source is self.crosshair and self.show_cross.isChecked() != bool(event.source.visible):
            self.show_cross.setChecked(bool(event.source.visible))
