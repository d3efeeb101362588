"""The dock widget: a volume layer and a ViT checkpoint in, a heatmap layer over the anatomy out.

Everything heavy (torch, the model) is imported when first needed, so napari starts fast.
Work runs in a napari ``thread_worker``; layers are only touched in the main thread, from the
worker's signals. Every callback is a plain method, so tests (and scripts) can drive the widget.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    Table,
)

from .options import DEFAULT_THRESHOLD, METHODS, POOLINGS, UPSAMPLE_MODES

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger("napari_g3dvit")

PREDICTED = "predicted class"
CURRENT, ALL = "current timepoint", "all timepoints"
RESULT_KEY = "g3dvit"  # metadata key of a heatmap layer's settings
#: timepoints explained per worker step: Cancel takes effect between steps
CHUNK = 4


def heat_colormap():
    """inferno with its first colour set to exact black: with additive blending, no heat adds nothing."""
    from napari.utils.colormaps import AVAILABLE_COLORMAPS, Colormap

    colors = np.array(AVAILABLE_COLORMAPS["inferno"].colors, copy=True)
    colors[0, :3] = 0.0
    return Colormap(colors, name="g3dvit heat")


def _notify_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except Exception:  # pragma: no cover - no napari notification manager
        log.error(message)


class ExplainWidget(Container):
    """Explain a 3D ViT's decision on a volume layer; show the heatmap over the anatomy."""

    def __init__(self, viewer: "napari.viewer.Viewer"):
        super().__init__(labels=True)
        self._viewer = viewer
        self.model = None
        self.model_path: Path | None = None
        self._summary = None
        self._worker = None
        self.last_layer = None
        self.last_error = ""

        self.volume = ComboBox(label="volume", choices=self._image_layers, nullable=True)
        self.checkpoint = FileEdit(label="checkpoint", mode="r",
                                   filter="*.safetensors *.pt *.pth *.ckpt *.bin")
        self.config = FileEdit(label="config (JSON)", mode="r", filter="*.json", visible=False)
        self.summary = Label(label="model", value="no model loaded")
        self.hook_layer = ComboBox(label="hook layer", choices=[])
        self.method = ComboBox(label="method", choices=METHODS, value="g3dvit")
        self.pooling = ComboBox(label="pooling", choices=POOLINGS, value="mean")
        self.target = ComboBox(label="target", choices=[PREDICTED], value=PREDICTED)
        self.threshold = FloatSpinBox(label="keep top %", value=DEFAULT_THRESHOLD, min=0.1, max=100.0, step=1.0)
        self.upsample = ComboBox(label="upsampling", choices=UPSAMPLE_MODES, value="trilinear")
        self.device = ComboBox(label="device", choices=["cpu"], value="cpu")
        self.timepoints = ComboBox(label="timepoints", choices=[CURRENT, ALL], value=CURRENT, visible=False)
        self.run_button = PushButton(text="Explain")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.result = Label(label="result", value="")
        self.regions = ComboBox(label="regions", choices=self._labels_layers, nullable=True)
        self.region_button = PushButton(text="Region table")
        self.region_table = Table(value=[], visible=False)
        self.csv_path = FileEdit(label="export to", mode="w", filter="*.csv", value="regions.csv")
        self.export_button = PushButton(text="Export CSV", enabled=False)
        self.extend([self.volume, self.checkpoint, self.config, self.summary, self.hook_layer, self.method,
                     self.pooling, self.target, self.threshold, self.upsample, self.device, self.timepoints,
                     self.run_button, self.cancel_button, self.progress, self.result, self.regions,
                     self.region_button, self.region_table, self.csv_path, self.export_button])
        self._region_rows: list[dict] = []

        self.volume.changed.connect(self._on_volume_changed)
        self.checkpoint.changed.connect(self._on_checkpoint_changed)
        self.config.changed.connect(self._on_checkpoint_changed)
        self.method.changed.connect(self._sync_pooling)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.region_button.changed.connect(self.show_regions)
        self.export_button.changed.connect(self.export_regions)
        from qtpy.QtWidgets import QSizePolicy

        self.summary.native.setWordWrap(True)  # the one long line; the others stay short
        self.summary.native.setMinimumHeight(2 * self.summary.native.fontMetrics().height() + 4)
        for label in (self.summary, self.result):  # as wide as the column, whatever text came first
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            label.native.setMinimumWidth(240)
        self.reset_choices()  # napari's add_dock_widget connects this to the layer-list events
        self._on_volume_changed(self.volume.value)

    def reset_choices(self, *_args) -> None:
        """Refresh the layer dropdowns (napari calls this on every layer-list change).

        Only those two: the other dropdowns hold model-dependent choices that a layer event
        must not wipe.
        """
        self.volume.reset_choices()
        self.regions.reset_choices()

    # -- choices that follow the viewer ---------------------------------------------------------

    def _image_layers(self, _widget=None) -> list:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _labels_layers(self, _widget=None) -> list:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _sync_pooling(self, method: str) -> None:
        self.pooling.enabled = method == "g3dvit"

    def _show_error(self, message: str) -> None:
        self.last_error = message
        self.result.value = f"error: {message}"
        _notify_error(message)

    # -- volume and model --------------------------------------------------------------------------

    def _on_volume_changed(self, layer) -> None:
        self.timepoints.visible = layer is not None and layer.ndim == 4
        if layer is None:
            return
        from ._sample_data import MODEL_KEY

        offered = layer.metadata.get(MODEL_KEY)
        if offered and (self.model_path is None or Path(offered) != self.model_path):
            self.checkpoint.value = offered  # picking a sample volume offers its sample model

    def _on_checkpoint_changed(self, _value=None) -> None:
        path = Path(self.checkpoint.value)
        if not path.is_file():
            return
        config = Path(self.config.value)
        self.load_model(path, config if config.is_file() and config.suffix == ".json" else None)

    def load_model(self, path: Path, config: Path | None = None) -> bool:
        """Load a checkpoint (and config); errors show in the widget and as notifications."""
        import napari_g3dvit as g3d
        from napari_g3dvit.api import available_devices
        from napari_g3dvit.models.config import ConfigError

        try:
            model = g3d.load_model(path, config=config)
            summary = g3d.describe_model(model)
        except ConfigError as err:
            self.config.visible = "needs a config" in str(err) or config is not None
            self._show_error(str(err))
            return False
        except (g3d.G3DViTError, OSError) as err:
            self._show_error(str(err))
            return False
        self.model, self.model_path, self._summary = model, Path(path), summary
        self.hook_layer.choices = list(summary.layers)
        self.hook_layer.value = summary.default_layer
        self.target.choices = [PREDICTED, *summary.class_names]
        self.target.value = PREDICTED
        recommended = (getattr(model, "g3dvit_config", None) or {}).get("recommended_explanation") or {}
        if recommended.get("layer") in summary.layers:
            self.hook_layer.value = recommended["layer"]
        if recommended.get("method") in METHODS:
            self.method.value = recommended["method"]
        self.device.choices = available_devices()
        self.device.value = self.device.choices[0]
        self.summary.value = summary.line(self.device.value)
        self.result.value = f"loaded {Path(path).name}"
        self.last_error = ""
        return True

    # -- running ---------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The explain() settings the widget currently shows."""
        target = None
        if self.target.value != PREDICTED:
            target = list(self._summary.class_names).index(self.target.value)
        return {"method": self.method.value, "layer": self.hook_layer.value, "pooling": self.pooling.value,
                "target": target, "threshold": float(self.threshold.value), "upsample": self.upsample.value,
                "device": self.device.value}

    def _current_timepoint(self, layer) -> int:
        """Index along ``layer``'s first (time) axis at the viewer's current position."""
        index = layer.world_to_data(self._viewer.dims.point)[0]
        return int(min(max(round(float(index)), 0), layer.data.shape[0] - 1))

    def _volume_array(self, layer) -> tuple[np.ndarray, int | None]:
        """The volume to explain as (D, H, W) or (T, D, H, W), and the timepoint if one was taken."""
        data = np.asarray(layer.data)
        if data.ndim == 4 and self.timepoints.value == CURRENT:
            t = self._current_timepoint(layer)
            return data[t], t
        return data, None

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
        if self.model is None:
            self._show_error("load a model checkpoint first")
            return None
        from napari.qt.threading import thread_worker

        volume, timepoint = self._volume_array(layer)
        settings = self.settings()
        # what the result will be labelled with, fixed now: another model may be loaded meanwhile
        run = {"model": self.model, "path": self.model_path, "names": self._summary.class_names}

        @thread_worker
        def work():
            import torch

            import napari_g3dvit as g3d

            # a volume is a run of one chunk; a series runs in chunks of timepoints
            series = volume.ndim == 4
            chunks = [volume[s : s + CHUNK] for s in range(0, len(volume), CHUNK)] if series else [volume]
            total, done = (len(volume) if series else 1), 0
            yield done, total  # Cancel can stop the run before its first (longest) step
            model = run["model"]
            home = next(model.parameters()).device
            model.to(settings["device"])  # once per run, not once per chunk
            try:
                parts = []
                for chunk in chunks:
                    parts.append(g3d.explain(model, chunk, **settings))
                    done += len(chunk) if series else 1
                    yield done, total
                return parts
            finally:
                model.to(home)
                if torch.device(settings["device"]).type == "cuda":
                    torch.cuda.empty_cache()

        worker = work()
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_result(layer, result, settings, timepoint, run))
        worker.errored.connect(lambda err: self._show_error(str(err)))
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.result.value = "explaining..."
        worker.start()
        return worker

    def wait(self, poll: float = 0.02) -> None:
        """Process Qt events until the current run has finished (for scripts and benchmarks)."""
        import time

        from qtpy.QtWidgets import QApplication

        while self._worker is not None:
            QApplication.processEvents()
            time.sleep(poll)

    def cancel(self, _value=None) -> None:
        if self._worker is not None:
            self._worker.quit()

    def _on_progress(self, step: tuple[int, int]) -> None:
        done, total = step
        self.progress.max = total
        self.progress.value = done

    def _on_aborted(self) -> None:
        self.result.value = "cancelled: nothing was added"

    def _on_finished(self) -> None:
        self._worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    # -- the result layer --------------------------------------------------------------------------

    def _on_result(self, anatomy, parts: list, settings: dict, timepoint: int | None, run: dict) -> None:
        """Add (or update) the heatmap layer from the explanations of one run (chunks of a series)."""
        exp, series = parts[0], parts[0].heatmap.ndim == 4
        heat = np.concatenate([p.heatmap for p in parts]) if series else exp.heatmap
        tokens = np.concatenate([p.token_map for p in parts]) if series else exp.token_map
        probs = np.concatenate([p.probabilities for p in parts]) if series else exp.probabilities
        target = np.concatenate([p.target for p in parts]) if series else exp.target
        names = run["names"]
        kept = tokens[tokens > 0]
        low = float(kept.min()) if kept.size and settings["threshold"] < 100 else 0.0
        limits = (low, 1.0) if low < 1.0 else (0.0, 1.0)
        ndim = heat.ndim  # a 3D map of one timepoint takes the spatial part of a 4D transform
        transform = {key: np.asarray(getattr(anatomy, key))[-ndim:] for key in ("scale", "translate")}
        transform["affine"] = np.asarray(anatomy.affine.affine_matrix)[-ndim - 1 :, -ndim - 1 :]
        record = {
            "volume": anatomy.name, "model": str(run["path"]), **settings, "layer": exp.layer,
            "series": series, "timepoint": timepoint,
            "explained_class": np.atleast_1d(target).tolist(),
            "explained_class_name": [names[int(t)] for t in np.atleast_1d(target)],
            "probabilities": np.asarray(probs).tolist(),
            "class_names": list(names),
        }
        metadata = {RESULT_KEY: record}
        if "nifti" in anatomy.metadata:  # lets the NIfTI writer restore the source affine
            metadata["nifti"] = anatomy.metadata["nifti"]
        name = f"{anatomy.name} {exp.method} @ {exp.layer}"
        same = [lay for lay in self._viewer.layers
                if RESULT_KEY in lay.metadata and self._same_run(lay.metadata[RESULT_KEY], record)]
        if same:
            out = same[0]
            out.data = heat
            out.metadata = metadata
            out.contrast_limits = limits
        else:
            out = self._viewer.add_image(heat, name=name, colormap=heat_colormap(), blending="additive",
                                         rendering="mip", contrast_limits=limits, metadata=metadata, **transform)
        self.last_layer = out
        if series:
            self.result.value = f"{len(target)} timepoints explained"
        else:
            self.result.value = f"{names[int(target)]}, p = {probs[int(target)]:.2f}"
        self.result.tooltip = f"heatmap layer: {out.name}"
        self.last_error = ""

    @staticmethod
    def _same_run(old: dict, new: dict) -> bool:
        """Same volume, model and settings (a new timepoint of the same run updates its layer)."""
        keys = ("volume", "model", "method", "layer", "pooling", "target", "threshold", "upsample",
                "device", "series")
        return all(old.get(k) == new.get(k) for k in keys)

    # -- regions -----------------------------------------------------------------------------------------

    def show_regions(self, _value=None) -> list[dict]:
        """Table of heat per label of the chosen Labels layer, for the last heatmap."""
        from .regions import region_table

        labels = self.regions.value
        if self.last_layer is None or labels is None:
            self._show_error("run an explanation and pick a Labels layer first")
            return []
        heat = np.asarray(self.last_layer.data)
        if heat.ndim == 4:
            heat = heat[self._current_timepoint(self.last_layer)]
        try:
            rows = region_table(heat, np.asarray(labels.data))
        except ValueError as err:
            self._show_error(str(err))
            return []
        self._region_rows = rows
        self.region_table.value = [
            {key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}
            for row in rows
        ]
        self.region_table.visible = True
        self.export_button.enabled = bool(rows)
        return rows

    def export_regions(self, _value=None) -> str | None:
        from .regions import write_csv

        if not self._region_rows:
            self._show_error("make a region table first")
            return None
        path = write_csv(self._region_rows, Path(self.csv_path.value))
        self.result.value = f"region table written to {path}"
        return path
