"""Sections of the Explain dock for looking at a map with colleagues: label names, peaks, go-to,
and views saved to a file. Each only wires controls to Qt-free functions (``labelnames``,
``peaks``, ``navigate``, ``views``); ``host`` is the Explain widget (its viewer, last heatmap,
Labels choice, result line and error display).
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, FileEdit, LineEdit, PushButton, Table

from .outputs import safe_name, user_folder
from .records import heat_facts, labels_facts
from .runner import RESULT_KEY

TOOLTIPS = {
    "names_file": "A lookup table naming the labels: a BIDS dseg.tsv, a FreeSurfer colour LUT "
                  "(FreeSurferColorLUT.txt format) or an FSL atlas XML.",
    "names_button": "Give the Labels layer chosen under 'regions' these names (and colours): the status bar, "
                    "region and peak tables then show names.",
    "peaks_button": "Clusters of the last heatmap above its colour threshold, largest peak first, with the "
                    "peak's position in mm and the label there (from the Labels layer under 'regions').",
    "peak_table": "Click a row to move every view to that peak.",
    "peaks_path": "Where the peak table is written.",
    "export_peaks_button": "Write the peak table as CSV, with a header saying which map it came from.",
    "go_to": "A point in scanner millimetres, x y z (e.g. -30, -52, 48); Enter moves every view there.",
    "view_path": "A view file (JSON): layers, display settings, slice position and camera.",
    "save_view_button": "Save the viewer's layers and view to the file above (layers without a file are "
                        "written as NIfTI beside it).",
    "open_view_button": "Open the view file above: its layers, settings, slice position and camera.",
}


def _row(label: str, *widgets) -> Container:
    """Widgets side by side on one labelled row."""
    row = Container(widgets=list(widgets), layout="horizontal", labels=False, label=label)
    row.margins = (0, 0, 0, 0)
    return row


class InspectSections(Container):
    """Label names, peaks, go-to and views, as rows of the Explain dock."""

    def __init__(self, host):
        super().__init__(labels=True)
        self.host = host
        self.peak_rows = []  # the last PeakTable
        self._peaks_default: Path | None = None
        self._peaks_about: dict = {}
        self.names_file = FileEdit(label="label names", mode="r", filter="*.tsv *.txt *.xml *.ctab")
        self.names_button = PushButton(text="Attach names")
        self.peaks_button = PushButton(text="Peaks")
        self.peak_table = Table(value=[], visible=False)
        self.peaks_path = FileEdit(label="peaks to", mode="w", filter="*.csv *.tsv", value=Path.home() / "peaks.csv")
        self.export_peaks_button = PushButton(text="Export peaks", enabled=False)
        self.go_to = LineEdit(label="go to (mm)", value="")
        self.view_path = FileEdit(label="view file", mode="w", filter="*.json", value=Path.home() / "view.json")
        self.save_view_button = PushButton(text="Save view")
        self.open_view_button = PushButton(text="Open view")
        # compact rows: the dock stays short enough to share a column with the Time course dock
        self.extend([_row("label names", self.names_file, self.names_button),
                     _row("peaks", self.peaks_button, self.export_peaks_button), self.peak_table, self.peaks_path,
                     self.go_to, self.view_path, _row("view", self.save_view_button, self.open_view_button)])
        for name, tip in TOOLTIPS.items():
            getattr(self, name).tooltip = tip
        self.go_to.native.setPlaceholderText("x, y, z")
        self.names_button.changed.connect(lambda _v=None: self.attach_names())
        self.peaks_button.changed.connect(lambda _v=None: self.show_peaks())
        self.export_peaks_button.changed.connect(lambda _v=None: self.export_peaks())
        self.go_to.native.returnPressed.connect(lambda: self.go_to_text(self.go_to.value))
        self.peak_table.native.cellClicked.connect(lambda row, _column: self.go_to_peak(row))
        self.save_view_button.changed.connect(lambda _v=None: self.save_view())
        self.open_view_button.changed.connect(lambda _v=None: self.open_view())

    # -- label names ----------------------------------------------------------------------------------------

    def attach_names(self, path=None):
        """Attach the names file (or ``path``) to the Labels layer chosen under 'regions'."""
        from .labelnames import LabelNamesError, attach

        labels = self.host.regions.value
        path = Path(path if path is not None else self.names_file.value)
        if labels is None:
            self.host._show_error("pick a Labels layer under 'regions' first")
            return None
        if not path.is_file():
            self.host._show_error(f"pick a label table (dseg.tsv, FreeSurfer LUT or FSL XML); {path} is not a file")
            return None
        try:
            names = attach(labels, path)
        except LabelNamesError as err:
            self.host._show_error(str(err))
            return None
        self.host._say(f"'{labels.name}': {names.describe()}")
        return names

    # -- peaks ------------------------------------------------------------------------------------------------

    def _heat(self):
        layer = self.host.last_layer
        if layer is None or layer not in self.host._viewer.layers:
            return None
        return layer

    def show_peaks(self):
        """The peak table of the last heatmap (at the current timepoint of a series)."""
        from .peaktable import peaks

        layer = self._heat()
        self.peak_table.visible = False
        self.export_peaks_button.enabled = False
        self.peak_rows = []
        if layer is None:
            self.host._show_error("run an explanation first")
            return None
        labels = self.host.regions.value
        timepoint = self.host._current_timepoint(layer) if layer.ndim == 4 else None
        try:
            table = peaks(layer, labels=labels, timepoint=timepoint)
        except ValueError as err:
            self.host._show_error(str(err))
            return None
        self.peak_rows = table
        rows = table.rows()
        self.peak_table.value = [{k: round(v, 3) if isinstance(v, float) else ("" if v is None else v)
                                  for k, v in row.items()} for row in rows] or []
        self.peak_table.visible = bool(rows)
        self.peak_table.native.resizeColumnsToContents()
        self.export_peaks_button.enabled = bool(rows)
        record = layer.metadata.get(RESULT_KEY, {})
        self._peaks_about = {**heat_facts(record, layer.name)}
        if timepoint is not None:
            self._peaks_about["timepoint"] = str(timepoint)
        if labels is not None:
            self._peaks_about.update(labels_facts(labels.name, labels.metadata))
        if Path(self.peaks_path.value) in (Path.home() / "peaks.csv", self._peaks_default):
            source = (layer.metadata.get("nifti") or {}).get("path")
            self._peaks_default = user_folder(source) / f"{safe_name(record.get('volume', 'heatmap'))}_peaks.csv"
            self.peaks_path.value = self._peaks_default
        where = f"; the largest at {', '.join(f'{v:.0f}' for v in table[0].peak_mm)} mm" if rows else ""
        self.host._say(f"{len(rows)} clusters above {table.threshold:.3g} in '{layer.name}'{where}")
        return table

    def go_to_peak(self, row: int):
        """Move every view to the peak of row ``row`` of the peak table; returns ``dims.point``."""
        from .navigate import go_to_world

        if not 0 <= row < len(self.peak_rows):
            return None
        peak = self.peak_rows[row]
        point = go_to_world(self.host._viewer, peak.world)
        self.host._say(f"cluster {row + 1}: peak {peak.peak:.3f} at "
                       f"{', '.join(f'{v:.1f}' for v in peak.peak_mm)} mm"
                       + (f" in {peak.label}" if peak.label else ""))
        return point

    def export_peaks(self, path=None):
        if not len(self.peak_rows):
            self.host._show_error("make a peak table first")
            return None
        if path is not None:
            self.peaks_path.value = path
        target = Path(self.peaks_path.value).expanduser().resolve()
        try:
            written = self.peak_rows.write_csv(target, about=self._peaks_about)
        except OSError as err:
            self.host._show_error(f"could not write {target}: {err.strerror or err}")
            return None
        self.host._say(f"peak table written to {written}")
        return written

    # -- go to ------------------------------------------------------------------------------------------------

    def go_to_text(self, text: str):
        """Move every view to the point typed in mm; returns ``dims.point`` (None on bad input)."""
        from .navigate import go_to_mm, parse_mm

        try:
            point = go_to_mm(self.host._viewer, parse_mm(text))
        except ValueError as err:
            self.host._show_error(str(err))
            return None
        self.host._say(f"at {text.strip()} mm")
        return point

    # -- views ------------------------------------------------------------------------------------------------

    def save_view(self, path=None):
        from .views import save_view

        if path is not None:
            self.view_path.value = path
        target = Path(self.view_path.value).expanduser()
        try:
            written = save_view(self.host._viewer, target)
        except (OSError, ValueError) as err:
            self.host._show_error(f"could not save the view to {target}: {getattr(err, 'strerror', None) or err}")
            return None
        self.host._say(f"view saved to {written}")
        return written

    def open_view(self, path=None):
        from .views import open_view

        if path is not None:
            self.view_path.value = path
        source = Path(self.view_path.value).expanduser()
        try:
            report = open_view(self.host._viewer, source)
        except (OSError, ValueError) as err:
            self.host._show_error(f"could not open the view {source}: {getattr(err, 'strerror', None) or err}")
            return None
        if report.missing:
            self.host._show_error(report.summary())
        else:
            self.host._say(report.summary())
        return report
