"""The "Time course" dock widget: a series explanation's curves over time, linked to the time slider.

napari builds it from Plugins > Time course and passes the viewer to ``napari_viewer``. The
curves come from ``timecourse.layer_time_courses`` (the same numbers a script or a batch run
gets); this module only chooses layers, draws and links:

- the plot -> the viewer: a click (or a drag) on the plot moves the time slider to the nearest
  timepoint (``click_time``);
- the viewer -> the plot: ``viewer.dims.events.current_step`` moves the vertical marker.

The plot follows the chosen heat layer (a re-run changes its data and metadata) and the chosen
region (a Labels layer, painted or replaced).
"""

from __future__ import annotations

import logging
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from matplotlib.colors import to_rgb
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ._closing import when_closed
from .records import heat_facts, labels_facts
from .runner import RESULT_KEY
from .timecourse import (
    HEAT_PEAK,
    TimeCourses,
    default_table_path,
    events_beside,
    layer_time_courses,
    read_events,
    source_path,
    write_table,
)

log = logging.getLogger("napari_g3dvit")

NO_SERIES = "explain all timepoints of a 4D volume to see its time course"
PEAK = "none (the map's peak)"
TIME_LABEL = "time (s)"
#: more predicted classes than this are not told apart by colour on the plot
MAX_CLASS_COLOURS = 8
#: pixels; small enough that this dock and the explain dock fit one column of a laptop screen
MIN_PLOT_HEIGHT = 260
#: layer events after which the curves are recomputed
HEAT_EVENTS = ("data", "metadata", "scale", "translate")
LABELS_EVENTS = ("data", "paint", "scale", "translate", "affine")

TOOLTIPS = {
    "heat": "A heatmap layer made by explaining all timepoints of a 4D volume (Explain 3D ViT).",
    "region": "A Labels layer (mask or atlas) in the same world space: the curve is the mean heat "
              "where its labels are above 0. None: the map's peak at each timepoint.",
    "export_path": "Where the curves are written: CSV, or TSV when the name ends with .tsv "
                   "(the default beside a BIDS BOLD run).",
    "export_button": "Write one row per timepoint: time, predicted class, its probability, heat, task design; "
                     "a header (CSV) or a JSON sidecar (TSV) says which heatmap, method, layer, class and labels.",
}


def _unwrapped(layer):
    """The layer itself: napari hands plugins proxies, a new one on every access."""
    return getattr(layer, "__wrapped__", layer)


class TimeCourseWidget(QWidget):
    """Probability, heat in a region and the task design of a series explanation, over time."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self._viewer = napari_viewer
        self.courses: TimeCourses | None = None
        self.marker_time: float | None = None
        self.message = ""
        self._layer = None  # the heat layer whose events are connected
        self._labels = None  # the labels layer whose events are connected
        self._default_export: Path | None = None
        self._marker = None
        self._legend = None
        self._closed = False

        self.heat = self._layer_box("heat map", "none", self._series_layers)
        self.region = self._layer_box("region", PEAK, self._labels_layers)
        self.status = Label(value=NO_SERIES)
        self.export_path = FileEdit(label="export to", mode="w", filter="*.csv *.tsv",
                                    value=Path.home() / "timecourse.csv")
        self.export_button = PushButton(text="Export curves", enabled=False)
        self.written = Label(value="")
        for name, tip in TOOLTIPS.items():
            getattr(self, name).tooltip = tip

        self.figure = Figure(figsize=(4.2, 3.2), layout="constrained")
        # probability above, heat below: two scales that mean different things, one time axis
        self.axes, self.heat_axes = self.figure.subplots(2, 1, sharex=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(MIN_PLOT_HEIGHT)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setToolTip("Click or drag to move the time slider to the nearest timepoint.")

        layout = QVBoxLayout(self)
        layout.addWidget(Container(widgets=[self.heat, self.region], labels=True).native)
        for label in (self.status, self.written):
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            # room for three lines from the start: a wrapped line is not counted in the dock's
            # minimum height, and the plot below would be drawn over
            label.native.setMinimumHeight(3 * label.native.fontMetrics().height() + 4)
        layout.addWidget(self.status.native)
        layout.addWidget(self.canvas, stretch=1)  # the plot takes the room the dock has
        layout.addWidget(Container(widgets=[self.export_path, self.export_button], labels=True).native)
        layout.addWidget(self.written.native)

        # a layer's data and metadata change one after the other when a run is repeated: one
        # refresh once both have changed, when control returns to the event loop
        self._refresh_later = QTimer(self)
        self._refresh_later.setSingleShot(True)
        self._refresh_later.setInterval(0)
        self._refresh_later.timeout.connect(self.refresh)

        self.heat.changed.connect(self._on_heat_changed)
        self.region.changed.connect(self._on_region_changed)
        self.export_button.changed.connect(lambda _v=None: self.export())
        self.canvas.mpl_connect("button_press_event", self._on_press)
        self.canvas.mpl_connect("motion_notify_event", self._on_drag)
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):  # also when not docked by napari
            event.connect(self.reset_choices)
        events.inserted.connect(self._on_inserted)
        napari_viewer.dims.events.current_step.connect(self._on_step)
        napari_viewer.events.theme.connect(self._on_theme)  # the plot follows napari's dark or light theme
        # a closed dock must not be called by the viewer and layers it outlives
        when_closed(self, self._on_close)
        self.reset_choices()
        self._on_heat_changed(self.heat.value)

    # -- choices that follow the viewer -------------------------------------------------------------------

    @staticmethod
    def _layer_box(label: str, none: str, choices) -> ComboBox:
        """A layer dropdown whose empty choice (value None) reads ``none``."""
        box = ComboBox(label=label, choices=[], nullable=True)
        box.null_string = none  # before the choices are filled in
        box.choices = choices
        box.value = None
        return box

    def _series_layers(self, _widget=None) -> list:
        """Heatmap layers of a whole series (explained at every timepoint)."""
        from napari.layers import Image

        return [(layer.name, _unwrapped(layer)) for layer in self._viewer.layers
                if isinstance(layer, Image) and layer.ndim == 4
                and (layer.metadata.get(RESULT_KEY) or {}).get("series")]

    def _labels_layers(self, _widget=None) -> list:
        from napari.layers import Labels

        return [(layer.name, _unwrapped(layer)) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def reset_choices(self, *_args) -> None:
        """Refresh both dropdowns (napari calls this on every layer-list change)."""
        self.heat.reset_choices()
        self.region.reset_choices()
        series = [choice for choice in self.heat.choices if choice is not None]
        if self.heat.value is None and series:
            self.heat.value = series[-1]

    def _on_inserted(self, event) -> None:
        """A new series heatmap is the one to look at."""
        layer = _unwrapped(event.value)
        if any(choice is layer for choice in self.heat.choices):
            self.heat.value = layer

    # -- following the chosen layers -----------------------------------------------------------------------

    def _connect(self, old, new, names: tuple[str, ...]) -> None:
        for layer, method in ((old, "disconnect"), (new, "connect")):
            if layer is None:
                continue
            for name in names:
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    getattr(emitter, method)(self._schedule)

    def _on_close(self) -> None:
        """The dock or the viewer closed: no event of the viewer or its layers reaches this dock again."""
        self._closed = True
        self._stop_following()

    def _stop_following(self) -> None:
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.disconnect(self.reset_choices)
        events.inserted.disconnect(self._on_inserted)
        self._viewer.dims.events.current_step.disconnect(self._on_step)
        self._viewer.events.theme.disconnect(self._on_theme)
        self._connect(self._layer, None, HEAT_EVENTS)
        self._connect(self._labels, None, LABELS_EVENTS)
        self._layer = self._labels = None

    def _schedule(self, _event=None) -> None:
        if not self._closed:
            self._refresh_later.start()

    def _on_heat_changed(self, layer) -> None:
        layer = _unwrapped(layer) if layer is not None else None
        self._connect(self._layer, layer, HEAT_EVENTS)
        self._layer = layer
        self._default_export_for(layer)
        self.refresh()

    def _on_region_changed(self, labels) -> None:
        labels = _unwrapped(labels) if labels is not None else None
        self._connect(self._labels, labels, LABELS_EVENTS)
        self._labels = labels
        self.refresh()

    def _default_export_for(self, layer) -> None:
        """Offer a path beside the source file, unless the user typed one of their own."""
        current = Path(self.export_path.value)
        untouched = str(current) in ("", ".") or current in (self._default_export, Path.home() / "timecourse.csv")
        if layer is None or not untouched:
            return
        volume = (layer.metadata.get(RESULT_KEY) or {}).get("volume") or layer.name
        self._default_export = default_table_path(source_path(layer.metadata), volume)
        self.export_path.value = self._default_export

    # -- the curves ---------------------------------------------------------------------------------------------

    def _events_for(self, layer) -> tuple[list | bool, str]:
        """The events beside the source file (False: none), and a note for the status line."""
        found = events_beside(source_path(layer.metadata))
        if found is None:
            return False, ""
        try:
            return read_events(found), f"task design from {found.name}"
        except (OSError, UnicodeDecodeError, ValueError) as err:
            return False, f"{found.name} not used: {err}"

    def refresh(self) -> TimeCourses | None:
        """Recompute the curves of the chosen heat layer and region, and redraw."""
        self._refresh_later.stop()
        layer, labels = self._layer, self._labels
        self.courses = None
        if layer is None or not any(other is layer for other in self._layers()):
            self._show_message(NO_SERIES)
            return None
        events, note = self._events_for(layer)
        try:
            courses = layer_time_courses(layer, labels, events=events)
        except ValueError as err:
            self._show_message(str(err))
            return None
        self.courses = courses
        parts = [f"{len(courses)} timepoints, TR {courses.tr:g} s"]
        if courses.heat_column == HEAT_PEAK:
            parts.append("heat: the map's peak")
        else:
            parts.append(f"heat: mean in '{labels.name}' ({courses.region_voxels} voxels)")
        if note:
            parts.append(note)
        self.message = "; ".join(parts)
        self.status.value = self.message
        self.export_button.enabled = True
        self._draw()
        self._on_step()
        return courses

    def _layers(self) -> list:
        return [_unwrapped(layer) for layer in self._viewer.layers]

    def _show_message(self, text: str) -> None:
        self.message = text
        self.status.value = text
        self.export_button.enabled = False
        self.marker_time, self._marker = None, None
        if self._legend is not None:
            self._legend.remove()
            self._legend = None
        colours = self._colours()
        self.figure.set_facecolor(colours["background"])
        for ax in (self.axes, self.heat_axes):
            ax.clear()
            ax.set_axis_off()
        self.axes.text(0.5, 0.0, text, ha="center", va="center", wrap=True, fontsize=9, color=colours["text"],
                       transform=self.axes.transAxes)
        self.canvas.draw_idle()

    def _colours(self) -> dict[str, str]:
        """The plot's colours from napari's current theme (dark or light)."""
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self._viewer.theme)
            pick = lambda name: getattr(theme, name).as_hex()  # noqa: E731
            out = {"background": pick("background"), "text": pick("text"), "grid": pick("foreground"),
                   "task": pick("primary")}
        except Exception:  # noqa: BLE001 - an unknown theme: matplotlib's light defaults
            out = {"background": "white", "text": "black", "grid": "0.85", "task": "0.85"}
        dark = np.mean(to_rgb(out["background"])) < 0.5
        out["probability"] = "#5dade2" if dark else "#1f77b4"
        out["heat"] = "#f5a623" if dark else "#d35400"
        return out

    def _on_theme(self, _event=None) -> None:
        if self.courses is not None:
            self._draw()
            self._on_step()
        else:
            self._show_message(self.message or NO_SERIES)

    def _draw(self) -> None:
        courses, top, bottom = self.courses, self.axes, self.heat_axes
        colours = self._colours()
        self.figure.set_facecolor(colours["background"])
        time = courses.time_s
        half = courses.tr / 2
        for ax in (top, bottom):
            ax.clear()
            ax.set_axis_on()
            ax.set_facecolor(colours["background"])
            first = True
            for row in courses.events:  # the task blocks behind both panels
                if row["duration"] > 0:
                    ax.axvspan(row["onset"], row["onset"] + row["duration"], color=colours["task"], alpha=0.45,
                               lw=0, zorder=0, label="task (events.tsv)" if first and ax is top else None)
                    first = False
            ax.tick_params(labelsize=8, colors=colours["text"])
            for spine in ax.spines.values():
                spine.set_color(colours["grid"])
            ax.grid(True, axis="y", color=colours["grid"], lw=0.6, alpha=0.6)
        names = courses.predicted_name
        shown = np.unique(courses.predicted)
        if names is not None and len(shown) <= MAX_CLASS_COLOURS:
            for k in shown:  # which class is predicted when: small dots under the line
                at = courses.predicted == k
                top.scatter(time[at], courses.probability[at], s=9, zorder=2, color=f"C{(int(k) + 2) % 10}",
                            label=f"predicted: {courses.class_names[int(k)]}", linewidths=0)
        top.plot(time, courses.probability, color=colours["probability"], lw=1.4, zorder=3)
        top.set_ylim(-0.03, 1.05)
        top.set_ylabel("p(predicted)", fontsize=8, color=colours["text"])
        heat_label = "peak heat" if courses.heat_column == HEAT_PEAK else "heat in region"  # named above
        bottom.plot(time, courses.heat, color=colours["heat"], lw=1.4, zorder=3)
        low, high = float(np.min(courses.heat)), float(np.max(courses.heat))
        pad = 0.05 * (high - low) if high > low else 0.05
        bottom.set_ylim(low - pad, high + pad)  # its own scale: a small mean heat stays readable
        bottom.set_ylabel(heat_label, fontsize=8, color=colours["text"])
        bottom.set_xlabel(TIME_LABEL, fontsize=8, color=colours["text"])
        bottom.set_xlim(time[0] - half, time[-1] + half)
        self._marker = [ax.axvline(time[0], color=colours["text"], lw=1.0, alpha=0.8, zorder=4) for ax in (top, bottom)]
        if self._legend is not None:
            self._legend.remove()
        handles, labels = top.get_legend_handles_labels()
        # above the panels, outside them, one row: nothing covers the curves
        self._legend = self.figure.legend(handles, labels, loc="outside upper center", ncol=max(len(labels), 1),
                                          fontsize=7, frameon=False, handlelength=1.0, columnspacing=0.8,
                                          handletextpad=0.4, labelcolor=colours["text"])
        self.canvas.draw_idle()

    # -- linking with the time slider -----------------------------------------------------------------------

    def current_index(self) -> int | None:
        """The chosen heat layer's timepoint at the viewer's time slider."""
        layer = self._layer
        if layer is None or self.courses is None:
            return None
        point = np.asarray(self._viewer.dims.point, dtype=float)[-layer.ndim:]
        index = float(np.asarray(layer.world_to_data(point))[0])
        return int(min(max(round(index), 0), len(self.courses) - 1))

    def _on_step(self, _event=None) -> None:
        """The time slider moved: move the marker."""
        index = self.current_index()
        if index is None:
            return
        self.marker_time = float(self.courses.time_s[index])
        if self._marker is not None:
            for line in self._marker:
                line.set_xdata([self.marker_time, self.marker_time])
            self.canvas.draw_idle()

    def click_time(self, seconds: float) -> int | None:
        """Move the time slider to the timepoint nearest ``seconds`` (what a click on the plot does)."""
        if self.courses is None or self._layer is None:
            return None
        index = self.courses.nearest(seconds)
        layer = self._layer
        position = np.zeros(layer.ndim)
        position[0] = index
        world = float(np.asarray(layer.data_to_world(position))[0])
        axis = self._viewer.dims.ndim - layer.ndim  # layers line up with the viewer's last axes
        self._viewer.dims.set_point(axis, world)
        self._on_step()
        return index

    def _on_press(self, event) -> None:
        """matplotlib's button_press_event: a left click moves the slider."""
        if event.inaxes in (self.axes, self.heat_axes) and event.xdata is not None and event.button == 1:
            self.click_time(event.xdata)

    def _on_drag(self, event) -> None:
        """matplotlib's motion_notify_event: dragging with the left button held scrubs through time."""
        held = getattr(event, "buttons", None) or ()
        if 1 in held and event.inaxes in (self.axes, self.heat_axes) and event.xdata is not None:
            self.click_time(event.xdata)

    # -- export ---------------------------------------------------------------------------------------------------

    def about(self) -> dict[str, str]:
        """What the curves came from, for the exported table's header."""
        layer, labels = self._layer, self._labels
        facts = heat_facts((layer.metadata.get(RESULT_KEY) or {}) if layer is not None else {},
                           layer.name if layer is not None else None)
        facts.pop("timepoint", None)
        if labels is not None:
            facts.update(labels_facts(labels.name, labels.metadata))
        else:
            facts["heat"] = "the map's peak at each timepoint"
        found = events_beside(source_path(layer.metadata)) if layer is not None else None
        if found is not None and self.courses is not None and self.courses.design is not None:
            facts["task design"] = str(found)
        return facts

    def export(self, path=None) -> str | None:
        """Write the curves to ``path`` (default: the export field); returns the path written."""
        if self.courses is None:
            self.written.value = f"nothing to export: {self.message or NO_SERIES}"
            return None
        if path is not None:
            self.export_path.value = path
        target = Path(self.export_path.value).expanduser()
        try:
            written = write_table(self.courses, target, about=self.about())
        except OSError as err:
            self.written.value = f"could not write {target}: {err.strerror or err}"
            log.warning("napari-g3dvit: %s", self.written.value)
            return None
        self.written.value = f"curves written to {written}"
        self.written.tooltip = written
        return written
