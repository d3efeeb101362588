"""The dock widget: controls wired to ``runner`` (which holds the logic and needs no display).

napari builds it from Plugins > Explain 3D ViT and passes the viewer to ``napari_viewer``.
Loading a model and explaining both run in background workers; layers are only touched in the
main thread, from the workers' signals. Every worker ends with a value (a result or a
``RunFailure``), never with an exception, so the widget is usable again after any error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
)

from ._closing import Workers, when_closed
from ._sections import InspectSections
from .heatstyle import follow_ndisplay, show_legend
from .labelnames import names_of_layer
from .options import DEFAULT_INTERPOLATION, DEFAULT_THRESHOLD, INTERPOLATIONS, POOLINGS, UPSAMPLE_MODES
from .outputs import safe_name, user_folder
from .readout import install as install_readout
from .records import heat_facts, labels_facts
from .registry import AUTO, METHODS, SETTINGS, SPECS, baseline_choices, reads
from .runner import (
    DEFAULT_STEP,
    MODEL_KEY,
    RESULT_KEY,
    ExplainRun,
    RunFailure,
    VolumeSource,
    data_to_world_matrix,
    describe_error,
    open_model,
    region_rows,
    same_run,
    spatial_matrix,
)

log = logging.getLogger("napari_g3dvit")

PREDICTED = "predicted class"
CURRENT, ALL = "current timepoint", "all timepoints"
AUTO_CHOICE = ("auto (most faithful)", AUTO)  # (shown, value)
EACH_DEFAULT = ("each method's default", None)
NO_MODEL = "no model loaded: pick a checkpoint"
#: errors read as errors on napari's dark and light themes alike
ERROR_STYLE = "color: #ff5c5c; font-weight: bold;"

TOOLTIPS = {
    "volume": "The image layer to explain: a 3D volume, or a 4D series with time first.",
    "checkpoint": "The trained ViT: .safetensors, or .pt/.pth/.ckpt holding weights only. Its config "
                  "(<name>.json or config.json) is looked for beside it.",
    "config": "The model's JSON config, when none was found beside the checkpoint.",
    "summary": "Architecture, input size, classes, size and device of the loaded model.",
    "model_orientation": "Which way the voxels the model gets run (its config's input_orientation), "
                   "and the layer's own orientation.",
    "hook_layer": "The layer whose activations and gradients make the map (default: the last "
                  "block's attention-input LayerNorm).",
    "method": "How the map is made (see README, Methods). auto: every candidate is scored on this volume "
              "by how much of the class probability its hottest tokens keep on their own minus what is left "
              "without them, and the most faithful one is used; the scores are in the result's tooltip.",
    "baseline": SETTINGS["baseline"].help + ".",
    "pooling": SETTINGS["pooling"].help + ".",
    "steps": SETTINGS["steps"].help + ".",
    "occlusion": SETTINGS["occlusion"].help + ".",
    "relevance_block": SETTINGS["relevance_block"].help + ".",
    "target": "The class the map explains: the model's prediction, or a class you name.",
    "threshold": "Keep this percentage of the hottest tokens (5 as published; 100 keeps all).",
    "upsample": "From the token grid to voxels: trilinear, or nearest (each token fills its patch).",
    "device": "Where the model runs; the first entry is the default: a CUDA GPU when there is one, Apple's GPU "
              "(mps) on a Mac that has one, else the CPU. Operations Apple's GPU lacks run on the CPU (said in "
              "the result).",
    "model_space": "The grid the model was trained on (its config's input_space), and whether this layer is "
                   "on it or resampled into it (and its map back onto the layer's voxels).",
    "interpolation": "How a layer on another grid is resampled into the model's grid and its map back: "
                     "trilinear, or nearest (each voxel takes its nearest neighbour's value).",
    "timepoints": "For a 4D series: only the timepoint at the time slider, or every timepoint.",
    "batch_size": "Timepoints per forward pass and per step; lower it when memory runs out.",
    "run_button": "Compute the map in the background and add it as a heatmap layer.",
    "cancel_button": "Stop the run at its next step; nothing is added.",
    "progress": "Timepoints explained so far.",
    "result": "The prediction, or what went wrong.",
    "regions": "A Labels layer (atlas or annotation), on any grid in the same world space.",
    "region_button": "Table of heat per label for the last heatmap (labels resampled onto its voxels).",
    "region_table": "Voxels, mean and peak heat, and share of all heat per label.",
    "csv_path": "Where the region table is written.",
    "export_button": "Write the region table as CSV to the path above.",
}


class ExplainWidget(Container):
    """Explain a 3D ViT's decision on a volume layer; show the heatmap over the anatomy."""

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._workers = Workers()  # quit and cut off when the dock or the viewer closes
        self.loaded = None  # runner.LoadedModel shown in the checkpoint field, or None
        self._worker = None  # the explain run in progress
        self._loader = None  # the model load in progress
        self._pending_load = None  # (path, config) asked for while another load ran
        self.last_layer = None
        self.last_error = ""
        self._region_rows: list[dict] = []

        self.volume = ComboBox(label="volume", choices=self._image_layers, nullable=True)
        self.checkpoint = FileEdit(label="checkpoint", mode="r", filter="*.safetensors *.pt *.pth *.ckpt *.bin")
        self.config = FileEdit(label="config (JSON)", mode="r", filter="*.json", visible=False)
        self.summary = Label(label="model", value=NO_MODEL)
        self.model_orientation = Label(label="orientation", value="")
        self.model_space = Label(label="space", value="")
        self.hook_layer = ComboBox(label="hook layer", choices=[])
        self.method = ComboBox(label="method", choices=[AUTO_CHOICE, *((m, m) for m in METHODS)], value=AUTO)
        self.baseline = ComboBox(label="baseline", choices=[EACH_DEFAULT], value=None)
        self.pooling = ComboBox(label="pooling", choices=POOLINGS, value=SETTINGS["pooling"].default)
        self.steps = SpinBox(label="IG steps", value=SETTINGS["steps"].default, min=SETTINGS["steps"].minimum,
                             max=1024)
        self.occlusion = ComboBox(label="occlusion", choices=SETTINGS["occlusion"].choices,
                                  value=SETTINGS["occlusion"].default)
        self.relevance_block = SpinBox(label="relevance at block", value=SETTINGS["relevance_block"].default,
                                       min=SETTINGS["relevance_block"].minimum, max=0)
        self.target = ComboBox(label="target", choices=[PREDICTED], value=PREDICTED)
        self.threshold = FloatSpinBox(label="keep top %", value=DEFAULT_THRESHOLD, min=0.1, max=100.0, step=1.0)
        self.upsample = ComboBox(label="upsampling", choices=UPSAMPLE_MODES, value="trilinear")
        self.device = ComboBox(label="device", choices=["cpu"], value="cpu")
        self.interpolation = ComboBox(label="resampling", choices=list(INTERPOLATIONS), value=DEFAULT_INTERPOLATION,
                                      visible=False)
        self.timepoints = ComboBox(label="timepoints", choices=[CURRENT, ALL], value=CURRENT, visible=False)
        self.batch_size = SpinBox(label="batch size", value=DEFAULT_STEP, min=1, max=256, visible=False)
        self.run_button = PushButton(text="Explain", enabled=False)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.result = Label(label="result", value="")
        self.regions = ComboBox(label="regions", choices=self._labels_layers, nullable=True)
        self.region_button = PushButton(text="Region table")
        self.region_table = Table(value=[], visible=False)
        self.csv_path = FileEdit(label="export to", mode="w", filter="*.csv", value=Path.home() / "regions.csv")
        self.export_button = PushButton(text="Export CSV", enabled=False)
        self.extend([self.volume, self.checkpoint, self.config, self.summary, self.model_orientation,
                     self.model_space, self.hook_layer, self.method, self.baseline, self.pooling, self.steps,
                     self.occlusion, self.relevance_block, self.target, self.threshold, self.upsample, self.device,
                     self.interpolation, self.timepoints, self.batch_size, self.run_button, self.cancel_button,
                     self.progress,
                     self.result, self.regions, self.region_button, self.region_table, self.csv_path,
                     self.export_button])
        for name, tip in TOOLTIPS.items():
            getattr(self, name).tooltip = tip
        self._wrap_labels()
        # label names, peaks, go-to and saved views (see _sections.py)
        self.inspect = InspectSections(self)
        self.inspect.label = ""
        self.inspect.tooltip = "Label names, the peak table, go to a point in mm, and views saved to a file."
        self.show_inspect = CheckBox(text="show names, peaks, go to, views", value=True)
        self.show_inspect.tooltip = "Show or hide the rows below (hidden, the dock is shorter)."
        self.show_inspect.changed.connect(lambda shown: setattr(self.inspect, "visible", bool(shown)))
        self.extend([self.show_inspect, self.inspect])

        self.volume.changed.connect(self._on_volume_changed)
        self.checkpoint.changed.connect(self._on_checkpoint_changed)
        self.config.changed.connect(self._on_checkpoint_changed)
        self.method.changed.connect(self._sync_pooling)
        self.device.changed.connect(self._show_model_summary)
        self.interpolation.changed.connect(lambda _v: self._show_orientation())
        self.timepoints.changed.connect(lambda _v: self._sync_series_controls())
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.region_button.changed.connect(self.show_regions)
        self.export_button.changed.connect(self.export_regions)
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed):  # also when not docked through napari
            event.connect(self.reset_choices)
        when_closed(self.native, self._on_close)
        follow_ndisplay(napari_viewer)  # heat as a stat map in 2D, additive MIP in 3D
        install_readout(napari_viewer)  # mm, label names and heat under the cursor in the status bar
        self.reset_choices()
        self._sync_pooling(self.method.value)
        self._on_volume_changed(self.volume.value)

    def _wrap_labels(self) -> None:
        from qtpy.QtWidgets import QSizePolicy

        for label in (self.summary, self.model_orientation, self.model_space, self.result):  # long lines wrap, never cut
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            label.native.setMinimumWidth(240)
            # room for two lines from the start: a status change then does not resize the dock,
            # which would make napari redraw the canvas (a 3D volume takes long to draw)
            label.native.setMinimumHeight(2 * label.native.fontMetrics().height() + 4)

    def reset_choices(self, *_args) -> None:
        """Refresh the two layer dropdowns (napari calls this on every layer-list change).

        The other dropdowns hold model-dependent choices that a layer event must not wipe. An
        empty volume choice takes the first volume that appears.
        """
        self.volume.reset_choices()
        self.regions.reset_choices()
        if self.volume.value is None and self.volume.choices[1:]:
            self.volume.value = self.volume.choices[-1]

    # -- choices that follow the viewer -------------------------------------------------------------------

    def _image_layers(self, _widget=None) -> list:
        """Image layers that can be explained: not RGB, not a heatmap this widget made."""
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers
                if isinstance(layer, Image) and not layer.rgb and RESULT_KEY not in layer.metadata]

    def _labels_layers(self, _widget=None) -> list:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _sync_pooling(self, method: str) -> None:
        """Enable the controls the chosen method reads (the registry says which), and offer the
        baselines it accepts."""
        for name in SETTINGS:  # each setting's control is named as the setting
            if name != "layer":
                getattr(self, name).enabled = reads(method, name)
        self.hook_layer.enabled = method != AUTO and reads(method, "layer")
        current = self.baseline.value
        offered = baseline_choices(method) if reads(method, "baseline") else ()
        self.baseline.choices = [EACH_DEFAULT, *((b, b) for b in offered)]
        self.baseline.value = current if current in offered else None
        self.method.tooltip = TOOLTIPS["method"] if method == AUTO else (
            f"{SPECS[method].title}: {SPECS[method].summary} ({SPECS[method].reference}). Cost: {SPECS[method].cost}.")

    def _sync_series_controls(self) -> None:
        layer = self.volume.value
        series = layer is not None and layer.ndim == 4
        self.timepoints.visible = series
        self.batch_size.visible = series and self.timepoints.value == ALL

    def _show_error(self, message: str) -> None:
        """One place for an error: the widget's result line (wrapped, in the error colour), and the log."""
        self.last_error = message
        self._say(f"error: {message}", error=True)
        log.warning("napari-g3dvit: %s", message)

    def _say(self, text: str, error: bool = False) -> None:
        """Show ``text`` on the result line, styled as an error or as plain text."""
        self.result.value = text
        self.result.native.setStyleSheet(ERROR_STYLE if error else "")

    # -- volume and model -----------------------------------------------------------------------------------

    def _on_volume_changed(self, layer) -> None:
        self._sync_series_controls()
        self._show_orientation()
        if layer is None:
            return
        offered = layer.metadata.get(MODEL_KEY)
        shown = Path(self.checkpoint.value) if str(self.checkpoint.value) not in ("", ".") else None
        if offered and shown != Path(offered):
            self.checkpoint.value = offered  # picking a sample volume offers its sample model

    def _on_checkpoint_changed(self, _value=None) -> None:
        path = Path(self.checkpoint.value)
        if not path.is_file():
            return
        config = Path(self.config.value)
        self._start_load(path, config if config.is_file() and config.suffix == ".json" else None)

    def load_model(self, path, config=None, block: bool = True) -> bool:
        """Show ``path`` in the checkpoint field and load it in the background.

        With ``block`` (scripts, tests) wait for the load and return whether it succeeded.
        """
        with self.checkpoint.changed.blocked(), self.config.changed.blocked():
            if config is not None:
                self.config.value = config
            self.checkpoint.value = path
        self._start_load(Path(path), Path(config) if config is not None else None)
        if block:
            self.wait()
        return self.loaded is not None and self.loaded.path == Path(path)

    def _start_load(self, path: Path, config: Path | None) -> None:
        """Load in a worker; until it succeeds no model is shown, so none can be used by mistake."""
        if self._loader is not None:
            self._pending_load = (path, config)
            return
        from napari.qt.threading import create_worker

        self.loaded = None
        self.hook_layer.choices, self.target.choices = [], [PREDICTED]
        self.summary.value = f"loading {path.name}..."
        self.model_orientation.value = ""
        self._sync_buttons()

        def load():
            try:
                return open_model(path, config)
            except Exception as err:  # handed back as a value: a raised RuntimeError would be lost
                return RunFailure(describe_error(err))

        self._loader = self._workers.start(
            create_worker(load, _ignore_errors=True),
            returned=lambda outcome: self._on_loaded(path, config, outcome),
            errored=lambda err: self._on_loaded(path, config, RunFailure(describe_error(err))),
            finished=self._on_load_finished)

    def _on_load_finished(self) -> None:
        self._loader = None
        pending, self._pending_load = self._pending_load, None
        if pending is not None:
            self._start_load(*pending)
        self._sync_buttons()

    def _on_loaded(self, path: Path, config: Path | None, outcome) -> None:
        if self._pending_load is not None:  # the field already shows another file
            return
        if isinstance(outcome, RunFailure):
            self.summary.value = f"no model: {path.name} could not be loaded"
            self.config.visible = "needs a config" in outcome.message or config is not None
            self._show_error(outcome.message)
            return
        from napari_g3dvit.devices import available_devices, device_label

        from .defaults import run_defaults

        self.loaded = outcome
        summary = outcome.summary
        self.hook_layer.choices = list(summary.layers)
        self.hook_layer.value = summary.default_layer
        self.target.choices = [PREDICTED, *summary.class_names]
        self.relevance_block.max = max(len(summary.block_names) - 1, 0)
        defaults = run_defaults({**outcome.config, "class_names": list(summary.class_names)})
        self.method.value = defaults["method"]  # the same defaults as the command line
        self.target.value = defaults["target_name"] or PREDICTED
        if defaults["layer"] in summary.layers:
            self.hook_layer.value = defaults["layer"]
        with self.device.changed.blocked():
            self.device.choices = []  # refilled in order: magicgui would keep an old entry first
        self.device.choices = [(device_label(name), name) for name in available_devices()]
        self.device.value = self.device.choices[0]  # the default: the first (a GPU when there is one)
        self.interpolation.visible = bool(outcome.config.get("input_space"))
        self._show_model_summary()
        self._show_orientation()
        self._say(f"loaded {path.name}")
        self.last_error = ""

    def _show_model_summary(self, _value=None) -> None:
        if self.loaded is not None:
            self.summary.value = self.loaded.summary.line(self.device.value)

    def _show_orientation(self) -> None:
        """Say which orientation the model will get for the selected volume."""
        layer = self.volume.value
        if self.loaded is None or layer is None or layer.ndim not in (3, 4):
            self.model_orientation.value = self.model_space.value = ""
            return
        run = ExplainRun(self.loaded, VolumeSource.from_layer(layer), {}, interpolation=self.interpolation.value)
        self.model_orientation.value = run.orientation_note()
        self.model_space.value = run.space_note()

    def _sync_buttons(self) -> None:
        busy = self._worker is not None
        self.run_button.enabled = not busy and self._loader is None and self.loaded is not None
        self.cancel_button.enabled = busy

    # -- running --------------------------------------------------------------------------------------------

    @property
    def model(self):
        """The loaded model (None while loading, or after a failed load)."""
        return None if self.loaded is None else self.loaded.model

    def settings(self) -> dict[str, Any]:
        """The explain() settings the widget currently shows."""
        target = None
        if self.target.value != PREDICTED:
            target = list(self.loaded.summary.class_names).index(self.target.value)
        return {"method": self.method.value, "layer": self.hook_layer.value, "pooling": self.pooling.value,
                "target": target, "threshold": float(self.threshold.value), "upsample": self.upsample.value,
                "device": self.device.value, "baseline": self.baseline.value, "steps": int(self.steps.value),
                "occlusion": self.occlusion.value, "relevance_block": int(self.relevance_block.value)}

    def _current_timepoint(self, layer) -> int:
        """Index along ``layer``'s first (time) axis at the viewer's current position."""
        index = layer.world_to_data(self._viewer.dims.point)[0]
        return int(min(max(round(float(index)), 0), layer.data.shape[0] - 1))

    def run(self, _value=None):
        """Start explaining the selected volume; returns the worker (None when refused)."""
        layer = self.volume.value
        if self._worker is not None:
            return None
        if layer is None:
            self._show_error("pick a volume layer first")
            return None
        if layer.ndim not in (3, 4):
            self._show_error(f"'{layer.name}' is {layer.ndim}D; napari-g3dvit explains 3D volumes and 4D series")
            return None
        if self.loaded is None:
            self._show_error("wait for the model to load" if self._loader is not None
                             else "load a model checkpoint first")
            return None
        from napari.qt.threading import create_worker

        timepoint = self._current_timepoint(layer) if layer.ndim == 4 and self.timepoints.value == CURRENT else None
        run = ExplainRun(self.loaded, VolumeSource.from_layer(layer), self.settings(), timepoint=timepoint,
                         step=self.batch_size.value, interpolation=self.interpolation.value)
        run.warn_if_orientation_unknown()
        self.progress.value = 0
        self._say("explaining" + (f" timepoint {timepoint}..." if timepoint is not None else "..."))
        self._worker = self._workers.start(
            create_worker(run.steps, _ignore_errors=True),
            yielded=self._on_progress, returned=self._on_outcome,
            errored=lambda err: self._show_error(describe_error(err, run.settings["device"])),
            aborted=self._on_aborted, finished=self._on_finished)
        self._sync_buttons()
        return self._worker

    def wait(self, poll: float = 0.02) -> None:
        """Process Qt events until the current load and run have finished (scripts, benchmarks)."""
        import time

        from qtpy.QtWidgets import QApplication

        while self._worker is not None or self._loader is not None:
            QApplication.processEvents()
            time.sleep(poll)

    def _on_close(self) -> None:
        """The dock or the viewer closed: stop the workers; no slot of this widget runs again."""
        self._workers.stop()
        self._loader = self._worker = self._pending_load = None
        events = self._viewer.layers.events
        for event in (events.inserted, events.removed):
            event.disconnect(self.reset_choices)

    def cancel(self, _value=None) -> None:
        if self._worker is not None:
            self._worker.quit()

    def _on_progress(self, step: tuple[int, int]) -> None:
        done, total = step
        self.progress.max = total
        self.progress.value = done

    def _on_aborted(self) -> None:
        self._say("cancelled: nothing was added")

    def _on_finished(self) -> None:
        self._worker = None
        self._sync_buttons()

    # -- the result layer ------------------------------------------------------------------------------------

    def _on_outcome(self, outcome) -> None:
        """Add (or update) the heatmap layer, or show why the run failed."""
        if isinstance(outcome, RunFailure):
            self._show_error(outcome.message)
            return
        self._clear_regions()  # a table of the previous map would no longer describe what is shown
        same = [lay for lay in self._viewer.layers
                if RESULT_KEY in lay.metadata and same_run(lay.metadata[RESULT_KEY], outcome.record)]
        if same:
            out = same[0]
            out.data = outcome.data
            out.metadata = outcome.metadata
            out.contrast_limits = outcome.contrast_limits
            out.name = outcome.name
        else:
            out = self._viewer.add_image(outcome.data, **outcome.layer_kwargs(self._viewer.dims.ndisplay))
        # napari hands plugins a proxy of the viewer, and each access wraps a layer anew: keep the
        # layer itself, so the same layer compares as the same object run after run
        self.last_layer = getattr(out, "__wrapped__", out)
        show_legend(self._viewer, self.last_layer)  # napari's colorbar, and what it shows
        self._say(outcome.summary)
        self.result.tooltip = f"heatmap layer: {out.name}" + outcome.details()
        self.last_error = ""

    # -- regions ------------------------------------------------------------------------------------------------

    def _clear_regions(self) -> None:
        self._region_rows = []
        self.region_table.value = []
        self.region_table.visible = False
        self.export_button.enabled = False

    def show_regions(self, _value=None) -> list[dict]:
        """Table of heat per label of the chosen Labels layer, for the last heatmap."""
        labels = self.regions.value
        self._clear_regions()
        if self.last_layer is None or self.last_layer not in self._viewer.layers or labels is None:
            self._show_error("run an explanation and pick a Labels layer first")
            return []
        heat_layer = self.last_layer
        heat = np.asarray(heat_layer.data)
        if heat.ndim == 4:
            heat = heat[self._current_timepoint(heat_layer)]
        try:
            rows = region_rows(heat, spatial_matrix(data_to_world_matrix(heat_layer)), np.asarray(labels.data),
                               spatial_matrix(data_to_world_matrix(labels)), names=names_of_layer(labels))
        except ValueError as err:
            self._show_error(str(err))
            return []
        self._region_rows = rows
        self.region_table.value = [
            {key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}
            for row in rows
        ]
        self.region_table.visible = True
        self.region_table.native.resizeColumnsToContents()
        self.export_button.enabled = bool(rows)
        record = heat_layer.metadata.get(RESULT_KEY, {})
        self._regions_about = {**heat_facts(record, heat_layer.name), **labels_facts(labels.name, labels.metadata)}
        if heat_layer.ndim == 4:
            self._regions_about["timepoint"] = str(self._current_timepoint(heat_layer))
        if Path(self.csv_path.value) in (Path.home() / "regions.csv", getattr(self, "_csv_default", None)):
            source = (heat_layer.metadata.get("nifti") or {}).get("path")  # beside the data, never in the package
            self._csv_default = user_folder(source) / f"{safe_name(record.get('volume', 'heatmap'))}_regions.csv"
            self.csv_path.value = self._csv_default
        self._say(f"{len(rows)} labels of '{labels.name}' on the heatmap of '{heat_layer.name}'")
        return rows

    def export_regions(self, _value=None) -> str | None:
        from .regions import write_csv

        if not self._region_rows:
            self._show_error("make a region table first")
            return None
        target = Path(self.csv_path.value).expanduser().resolve()
        try:
            path = write_csv(self._region_rows, target, about=getattr(self, "_regions_about", None))
        except OSError as err:
            self._show_error(f"could not write {target}: {err.strerror or err}")
            return None
        self._say(f"region table written to {path}")
        self.result.tooltip = str(path)
        return path
