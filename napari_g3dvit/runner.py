"""One explain run from a viewer's point of view, without Qt.

The dock widget only wires controls to these pieces; scripts, the command line and tests use them
without a display:

- ``open_model``: a checkpoint in, a ``LoadedModel`` out (model, summary, recommended settings,
  the orientation it wants).
- ``VolumeSource.from_layer``: a napari layer's array, placement in world coordinates and NIfTI
  facts, frozen at the moment a run starts.
- ``ExplainRun``: reorients the volume for the model, explains it in steps that can be stopped
  between any two, and turns the result into a ``HeatLayer`` on the anatomy's own voxels and
  transform. ``steps()`` never raises: a failure comes back as a ``RunFailure`` with a message
  in the user's words, so a background worker always ends cleanly.
- ``labels_on_grid`` / ``region_rows``: a colleague's label volume, on any grid in the same world
  space, sampled onto the heatmap's voxels for the table of heat per label.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator

import numpy as np

from .orientation import ORIENTATION_KEY, STORED, Reorientation, codes_of, reorientation_for
from .records import heat_layer_name, short_layer
from .registry import SETTINGS

log = logging.getLogger("napari_g3dvit")

RESULT_KEY = "g3dvit"  # metadata key of a heatmap layer's record
#: metadata key naming the sample model a volume goes with; the widget offers it.
MODEL_KEY = "g3dvit_model"
#: timepoints explained per step by default: a run can be stopped between steps
DEFAULT_STEP = 4
#: settings that make two runs "the same" (a re-run updates the earlier layer)
SAME_RUN_KEYS = ("volume", "model", "method", *SETTINGS, "target", "threshold", "upsample", "device", "series",
                 "input_orientation", "space")
_warned_orientation: set[str] = set()


# -- the model ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedModel:
    """A model ready to explain, with what a person choosing settings needs to know about it."""

    model: Any  # torch.nn.Module
    path: Path
    summary: Any  # api.ModelSummary

    @property
    def config(self) -> dict:
        return getattr(self.model, "g3dvit_config", None) or {}

    @property
    def input_orientation(self) -> str | None:
        """The orientation of the model's training arrays (config ``input_orientation``), if known."""
        return self.config.get(ORIENTATION_KEY)

    def recommended(self) -> dict[str, str]:
        """The config's measured best ``layer``, ``method`` and ``target`` (a class name), where
        they name real choices."""
        from .registry import METHODS

        found = self.config.get("recommended_explanation") or {}
        out = {}
        if found.get("layer") in self.summary.layers:
            out["layer"] = found["layer"]
        if found.get("method") in METHODS:
            out["method"] = found["method"]
        if found.get("target") in list(self.summary.class_names):
            out["target"] = found["target"]
        return out


def open_model(path: str | Path, config: str | Path | None = None) -> LoadedModel:
    """Load a checkpoint (and config) and describe it; raises G3DViTError or OSError."""
    import napari_g3dvit as g3d

    model = g3d.load_model(path, config=config)
    return LoadedModel(model=model, path=Path(path), summary=g3d.describe_model(model))


# -- the volume ---------------------------------------------------------------------------------------

def data_to_world_matrix(layer) -> np.ndarray:
    """``layer``'s data-to-world map as an (ndim+1, ndim+1) homogeneous matrix (public API only)."""
    ndim = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(ndim)), dtype=float)
    matrix = np.eye(ndim + 1)
    for axis in range(ndim):
        unit = np.zeros(ndim)
        unit[axis] = 1.0
        matrix[:ndim, axis] = np.asarray(layer.data_to_world(unit), dtype=float) - origin
    matrix[:ndim, ndim] = origin
    return matrix


def spatial_matrix(matrix: np.ndarray) -> np.ndarray:
    """The (4, 4) spatial part of a homogeneous matrix whose last three axes are space."""
    out = np.eye(4)
    out[:3, :3] = matrix[-4:-1, -4:-1]
    out[:3, 3] = matrix[-4:-1, -1]
    return out


@dataclass(frozen=True)
class VolumeSource:
    """A layer's volume as a run sees it. data: (D, H, W) or (T, D, H, W), time first."""

    data: np.ndarray
    name: str
    to_world: np.ndarray  # (ndim+1, ndim+1) data-to-world
    transform: dict  # scale, translate, rotate, shear, affine as the layer holds them
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_layer(cls, layer) -> "VolumeSource":
        transform = {"scale": np.asarray(layer.scale, dtype=float),
                     "translate": np.asarray(layer.translate, dtype=float),
                     "rotate": np.asarray(layer.rotate, dtype=float),
                     "shear": np.asarray(layer.shear, dtype=float),
                     "affine": np.asarray(layer.affine.affine_matrix, dtype=float)}
        return cls(data=layer.data, name=layer.name, to_world=data_to_world_matrix(layer),
                   transform=transform, metadata=dict(layer.metadata))

    @property
    def codes(self) -> str:
        """How the array's spatial axes run in world (RAS+) terms, e.g. "RAS" for a read NIfTI."""
        return codes_of(self.to_world[-4:-1, -4:-1])

    @property
    def stored_codes(self) -> str | None:
        """The orientation its source file stores, when it came from one."""
        return (self.metadata.get("nifti") or {}).get("orientation")

    @property
    def placed(self) -> bool:
        """Whether the layer says where its voxels are in the world: read from a NIfTI file, or
        given a transform. A bare array (napari's identity transform) is not placed."""
        return "nifti" in self.metadata or not np.allclose(self.to_world, np.eye(len(self.to_world)))

    @property
    def grid_affine(self) -> np.ndarray:
        """(4, 4) voxel -> world of the spatial axes: the layer's world transform, or, for a layer
        read from a NIfTI file, the file's exact affine for the array as read (napari shows an
        oblique scan axis-aligned; the exact rotation is in its metadata)."""
        shown = spatial_matrix(self.to_world)
        exact = (self.metadata.get("nifti") or {}).get("canonical_affine")
        if exact is None:
            return shown
        exact = np.asarray(exact, dtype=float)
        as_read = np.diag([*np.linalg.norm(exact[:3, :3], axis=0), 1.0])  # how the reader placed it
        as_read[:3, 3] = exact[:3, 3]
        return exact if np.allclose(shown, as_read, atol=1e-4) else shown  # unless the layer was moved

    def spatial_transform(self, ndim: int) -> dict:
        """The layer transform for an ``ndim``-D layer on the same voxels (3: one timepoint).

        A shear mixes axes pairwise and cannot be cut to fewer axes; it is kept only when the
        dimensionality is unchanged.
        """
        out = {}
        for key, value in self.transform.items():
            if key in ("scale", "translate"):
                out[key] = value[-ndim:]
            elif key == "rotate":
                out[key] = value[-ndim:, -ndim:]
            elif key == "affine":
                out[key] = value[-ndim - 1 :, -ndim - 1 :]
            elif key == "shear" and ndim == self.data.ndim:
                out[key] = value
        return out


# -- errors in the user's words ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFailure:
    """A run that ended with an error; ``message`` is meant for the user."""

    message: str


def describe_error(err: BaseException, device: str = "cpu") -> str:
    """A message a user can act on, for any exception a run can raise."""
    from .errors import G3DViTError

    if isinstance(err, G3DViTError):
        return str(err)
    text = str(err).strip()
    if type(err).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return (f"the model ran out of memory on {device}. Explain fewer timepoints per step "
                "(batch size 1), the current timepoint only, or pick the 'cpu' device.")
    first = text.splitlines()[0] if text else ""
    if isinstance(err, RuntimeError):
        return f"the model failed on {device}: {first or type(err).__name__}"
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


# -- the result layer ------------------------------------------------------------------------------------

@dataclass
class HeatLayer:
    """What napari needs to show a heatmap over its anatomy. data: (D, H, W) or (T, D, H, W)."""

    data: np.ndarray
    name: str
    contrast_limits: tuple[float, float]
    transform: dict
    metadata: dict
    summary: str  # one line for the user

    @property
    def record(self) -> dict:
        return self.metadata[RESULT_KEY]

    def details(self) -> str:
        """What ``auto`` chose and why, one candidate a line (empty for other methods)."""
        auto = (self.record.get("details") or {}).get("auto")
        if not auto:
            return ""
        ranked = sorted(auto["scores"].items(), key=lambda item: -item[1])
        lines = [f"{label}: {score:+.3f}" for label, score in ranked]
        return f"\nauto chose {auto['chosen']} by {auto['criterion']}:\n" + "\n".join(lines)

    def layer_kwargs(self, ndisplay: int = 3) -> dict:
        """Keyword arguments for ``viewer.add_image(data, **kwargs)`` in a 2D or 3D view (see
        ``heatstyle``: a stat-map overlay in 2D, additive MIP in 3D)."""
        from .heatstyle import style

        return {"name": self.name, **style(ndisplay), "contrast_limits": self.contrast_limits,
                "metadata": self.metadata, **self.transform}


def same_run(old: dict, new: dict) -> bool:
    """Same volume, model and settings (a new timepoint of the same run updates its layer)."""
    return all(old.get(k) == new.get(k) for k in SAME_RUN_KEYS)


# -- the run ------------------------------------------------------------------------------------------------

class ExplainRun:
    """Explain one volume (or one timepoint, or a whole series) with one model and fixed settings.

    settings: ``explain`` keyword arguments (method, layer, pooling, target, threshold, upsample,
    device); ``timepoint``: for a 4D source, explain only this index of the time axis;
    ``step``: timepoints per step (and per forward pass) for a series.
    """

    def __init__(self, loaded: LoadedModel, source: VolumeSource, settings: dict[str, Any],
                 timepoint: int | None = None, step: int = DEFAULT_STEP, interpolation: str = "trilinear"):
        self.loaded, self.source, self.settings = loaded, source, dict(settings)
        self.timepoint, self.step = timepoint, max(int(step), 1)
        self.interpolation = interpolation
        self.device_note = ""  # set when Apple's GPU lacked an operation and the CPU took over
        self.space_plan, self.space_error = self._space_plan()
        if self.space_plan is not None and self.space_plan.resample:  # arrays run as the model's grid
            codes = self.space_plan.codes
            self.reorientation: Reorientation = reorientation_for(codes, codes, loaded.input_orientation)
        else:
            self.reorientation = reorientation_for(source.codes, source.stored_codes, loaded.input_orientation)

    def _space_plan(self):
        """(plan, None), or (None, the SpaceError) when the layer lies outside the model's space."""
        from .models.space import ModelSpace, SpaceError, plan_for

        space = ModelSpace.of_model(self.loaded.model)
        if space is None or not self.source.placed or self.source.data.ndim not in (3, 4):
            return None, None
        try:
            return plan_for(space, self.source.grid_affine, self.source.data.shape[-3:], self.interpolation), None
        except SpaceError as err:
            return None, err

    # what the model is given, for the user ------------------------------------------------------------

    def orientation_note(self) -> str:
        """One line saying which orientation the model gets, and why."""
        wanted = self.loaded.input_orientation
        got = self.reorientation.target
        if wanted is None:
            return (f"model gets {got} (the layer's array as it is): its config does not say how its "
                    "training arrays were oriented (input_orientation)")
        why = "as its source file stores it" if wanted == STORED else "from its config"
        return f"model gets {got} ({why}); the layer is {self.source.codes}"

    def space_note(self) -> str:
        """One line saying on which grid the model runs this layer (empty when its space is unknown)."""
        from .models.space import ModelSpace

        space = ModelSpace.of_model(self.loaded.model)
        if space is None:
            return ""
        if self.space_error is not None:
            return f"outside the model's space ({space.describe()}): register the scan first"
        if self.space_plan is None:
            return f"model's grid: {space.describe()} (this layer has no placement; taken as on it)"
        if not self.space_plan.resample:
            return f"on the model's grid: {space.describe()}"
        return f"{self.space_plan.note()}. Model's grid: {space.describe()}"

    def warn_if_orientation_unknown(self) -> None:
        """Warn once per model file when its config does not name ``input_orientation``."""
        key = str(self.loaded.path)
        if self.loaded.input_orientation is None and key not in _warned_orientation:
            _warned_orientation.add(key)
            warnings.warn(f"{self.loaded.path.name}: {self.orientation_note()}. Add "
                          "\"input_orientation\" (e.g. \"RAS\", \"LAS\" or \"stored\") to its config.",
                          UserWarning, stacklevel=2)

    def volume(self) -> np.ndarray:
        """The array to explain, in the layer's orientation: (D, H, W) or (T, D, H, W)."""
        data = self.source.data
        if data.ndim == 4 and self.timepoint is not None:
            return np.asarray(data[self.timepoint])
        return np.asarray(data)

    # running ------------------------------------------------------------------------------------------

    def steps(self) -> Generator[tuple[int, int], None, "HeatLayer | RunFailure"]:
        """Yield ``(done, total)`` between steps; return a ``HeatLayer`` or a ``RunFailure``.

        Closing the generator at a yield stops the run (the model goes back where it was).
        """
        device = str(self.settings.get("device") or "cpu")
        try:
            parts = yield from self._explain_steps()
        except Exception as err:  # every failure ends the run with a message, never a dead worker
            log.debug("explain run failed", exc_info=True)
            return RunFailure(describe_error(err, device))
        try:
            return self._heat_layer(parts)
        except Exception as err:
            log.debug("building the heat layer failed", exc_info=True)
            return RunFailure(describe_error(err, device))

    def run(self, progress=None) -> HeatLayer:
        """Run to the end in this thread; raises the failure's message as a RuntimeError."""
        gen = self.steps()
        try:
            while True:
                step = next(gen)
                if progress is not None:
                    progress(*step)
        except StopIteration as stop:
            outcome = stop.value
        if isinstance(outcome, RunFailure):
            raise RuntimeError(outcome.message)
        return outcome

    def _explain_steps(self):
        import napari_g3dvit as g3d

        from .devices import empty_cache

        if self.source.data.ndim not in (3, 4):
            raise g3d.VolumeError(f"'{self.source.name}' is {self.source.data.ndim}D; napari-g3dvit "
                                  "explains 3D volumes and 4D series (time first)")
        if self.space_error is not None:
            raise self.space_error
        volume = self.volume()
        series = volume.ndim == 4
        starts = range(0, len(volume), self.step) if series else [0]
        total, done = (len(volume) if series else 1), 0
        yield done, total  # a stop can come before the first (longest) step
        if self.space_plan is not None:
            volume = self.space_plan.to_model(volume)
        volume = self.reorientation.to_model(volume)
        model = self.loaded.model
        home = next(model.parameters()).device
        asked = self.settings.get("device") or "cpu"
        model.to(asked)  # once per run, not once per step
        try:
            explain_step = self._explainer(model, volume)
            if self.settings.get("method") == "auto":  # the choice was a long step of its own
                yield done, total
            parts = []
            for start in starts:
                chunk = volume[start : start + self.step] if series else volume
                parts.append(explain_step(chunk))
                if str(asked).startswith("mps") and parts[-1].device == "cpu" and not self.device_note:
                    from .devices import MPS_FALLBACK_NOTE

                    self.device_note = MPS_FALLBACK_NOTE  # the library ran it on the CPU: so do the rest
                    self.settings["device"] = "cpu"
                    model.to("cpu")
                    explain_step = self._explainer(model, volume)
                done += len(chunk) if series else 1
                yield done, total
            return parts
        finally:
            model.to(home)
            empty_cache(asked)

    def _explainer(self, model, volume: np.ndarray):
        """A function explaining one step's volume(s) with this run's settings.

        For ``auto`` the method and layer are chosen once, on the whole run's volume (a few of a
        series' timepoints), and reused for every step.
        """
        import napari_g3dvit as g3d

        if self.settings.get("method") != "auto":
            return lambda chunk: g3d.explain(model, chunk, **self.settings)
        from .choice import choice_for, explain_auto

        rest = {k: v for k, v in self.settings.items() if k not in ("method", "layer")}
        choice, _ = choice_for(model, volume, **rest)  # remembered for the next run of this model
        return lambda chunk: explain_auto(model, chunk, choice=choice, **rest)

    def _heat_layer(self, parts: list) -> HeatLayer:
        """Merge the steps' explanations into one heat layer on the anatomy's voxels."""
        first, series = parts[0], parts[0].heatmap.ndim == 4
        join = (lambda values: np.concatenate(values)) if series else (lambda values: values[0])
        heat = self.reorientation.to_volume(join([p.heatmap for p in parts]))
        plan = self.space_plan
        if plan is not None:
            heat = plan.to_scan(heat)  # back onto the layer's own voxels
        tokens = join([p.token_map for p in parts])
        probs = np.asarray(join([np.atleast_2d(p.probabilities) for p in parts]))
        target = np.atleast_1d(join([np.atleast_1d(p.target) for p in parts]))
        names = list(self.loaded.summary.class_names)
        kept = tokens[tokens > 0]
        low = float(kept.min()) if kept.size and (self.settings.get("threshold") or 100) < 100 else 0.0
        limits = (low, 1.0) if low < 1.0 else (0.0, 1.0)
        record = {
            "volume": self.source.name, "model": str(self.loaded.path), **self.settings,
            "layer": first.layer, "series": series, "timepoint": self.timepoint,
            "method_used": first.method, "details": first.extra,
            "time_seconds": self._seconds(self.timepoint),
            "input_orientation": self.reorientation.target, "volume_orientation": self.source.codes,
            "token_map_orientation": self.reorientation.target,
            "space": None if plan is None else plan.record(),
            "device_used": str(first.device),
            "explained_class": target.tolist(),
            "explained_class_name": [names[int(t)] for t in target],
            "probabilities": (probs if series else probs[0]).tolist(),
            "class_names": names,
        }
        metadata = {RESULT_KEY: record}
        if "nifti" in self.source.metadata:  # lets the NIfTI writer restore the source affine
            metadata["nifti"] = self.source.metadata["nifti"]
        name = heat_layer_name(record)  # the method first: the layer list shows a name's start
        how = f"auto chose {first.method}" if self.settings.get("method") == "auto" else first.method
        how += f" at {short_layer(first.layer)}"
        if series:
            summary = f"{len(target)} timepoints explained; {how}"
        else:
            t = int(target[0])
            summary = f"{names[t]}, p = {probs[0][t]:.2f}; {how}"
            if self.timepoint is not None:
                summary += f" at timepoint {self.timepoint}" + (
                    f" ({record['time_seconds']:g} s)" if record["time_seconds"] is not None else "")
        if plan is not None and plan.resample:
            summary += f"; {plan.note()}"
        if self.device_note:
            summary += f"; {self.device_note}"
        return HeatLayer(data=heat.astype(np.float32, copy=False), name=name, contrast_limits=limits,
                         transform=self.source.spatial_transform(heat.ndim), metadata=metadata,
                         summary=summary)

    def _seconds(self, timepoint: int | None) -> float | None:
        """World time of a timepoint (seconds when the layer's time axis is scaled by TR)."""
        if timepoint is None or self.source.data.ndim != 4:
            return None
        point = np.zeros(self.source.data.ndim + 1)
        point[0], point[-1] = timepoint, 1.0
        return round(float((self.source.to_world @ point)[0]), 6)


# -- regions on another grid -------------------------------------------------------------------------------

def labels_on_grid(labels: np.ndarray, labels_to_world: np.ndarray, shape: tuple[int, int, int],
                   grid_to_world: np.ndarray) -> np.ndarray:
    """``labels`` sampled (nearest neighbour) at the voxel centres of another grid.

    labels: (X, Y, Z) integers; labels_to_world, grid_to_world: (4, 4) voxel-to-world matrices;
    shape: the other grid's (X, Y, Z). Voxels outside the labels' extent get 0.
    """
    labels = np.asarray(labels)
    to_labels = np.linalg.inv(labels_to_world) @ grid_to_world
    out = np.zeros(shape, dtype=labels.dtype)
    rest = np.indices(shape[1:]).reshape(2, -1).astype(float)
    for i in range(shape[0]):  # one slab at a time bounds the memory of the coordinates
        points = np.vstack([np.full(rest.shape[1], float(i)), rest, np.ones(rest.shape[1])])
        nearest = np.floor((to_labels @ points)[:3] + 0.5).astype(np.int64)
        inside = np.all((nearest >= 0) & (nearest < np.array(labels.shape)[:, None]), axis=0)
        slab = np.zeros(rest.shape[1], dtype=labels.dtype)
        slab[inside] = labels[tuple(nearest[:, inside])]
        out[i] = slab.reshape(shape[1:])
    return out


def region_rows(heat: np.ndarray, heat_to_world: np.ndarray, labels: np.ndarray,
                labels_to_world: np.ndarray, names: dict[int, str] | None = None) -> list[dict]:
    """Heat per label, with the labels brought onto the heatmap's voxels through world space.

    heat: (X, Y, Z); labels: (X', Y', Z') on any grid; both matrices (4, 4) voxel-to-world;
    names: label value -> name.
    """
    from .regions import region_table

    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"the labels layer is {labels.ndim}D; pick a 3D Labels layer")
    if labels.shape != heat.shape or not np.allclose(labels_to_world, heat_to_world):
        labels = labels_on_grid(labels, labels_to_world, heat.shape, heat_to_world)
        if not labels.any():
            raise ValueError("the labels do not overlap the heatmap in world coordinates; "
                             "are they in the same space as the volume?")
    return region_table(heat, labels, names)
