"""Explaining with named methods: validated settings -> a prepared run -> each family's pass -> maps.

``explain`` (``api.py``) is the front door; ``auto`` (``choice.py``) calls ``explain_methods``
directly. Per batch of timepoints, every requested method family (``registry.FAMILY_PASSES``)
runs its pass once for all its methods; a sink turns the raw scores into the maps shown (ReLU,
min-max, threshold, tokens -> voxels, the model's preprocessing undone) and into
``Explanation`` objects.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from importlib import import_module
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .cam.engine import prepared_model
from .cam.postprocess import keep_top_percent, normalise_tokens, tokens_to_voxels
from .cam.result import class_probabilities
from .devices import resolve_device
from .errors import SettingsError, VolumeError
from .explanation import Explanation
from .models import find_adapter
from .models.layers import resolve_layer
from .models.preprocessing import Preprocessing
from .options import DEFAULT_THRESHOLD, UPSAMPLE_MODES
from .registry import FAMILY_PASSES, METHODS, SETTINGS, baseline_choices, families, spec

DEFAULT_BATCH_SIZE = 8


# -- volumes and targets ---------------------------------------------------------------------------

def _native_array(volume) -> np.ndarray:
    """``volume`` as a C-contiguous numeric array in native byte order (copied only if needed).

    Flipped views (``vol[::-1]``, a reoriented NIfTI), big-endian NIfTI data and memory maps all
    end up here; torch refuses the first two as they are.
    """
    try:
        array = np.asarray(volume)
    except (TypeError, ValueError) as err:
        raise VolumeError(f"the volume must be a numeric array, got {type(volume).__name__}") from err
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind not in "iufc":
        raise VolumeError(f"the volume must hold numbers, got an array of {array.dtype} ({type(volume).__name__})")
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def as_series(volume) -> tuple[torch.Tensor, bool]:
    """A volume (D, H, W) or series (T, D, H, W) as float32 [T, D, H, W], and whether it was 4D."""
    if isinstance(volume, torch.Tensor):
        if volume.device.type == "meta":
            raise VolumeError("the volume is a tensor on the 'meta' device and holds no values")
        array = volume.detach().cpu()
    else:
        array = torch.from_numpy(_native_array(volume))
    if array.dtype.is_complex:
        raise VolumeError("the volume holds complex numbers; pass its magnitude")
    if array.ndim not in (3, 4):
        shape = "x".join(map(str, array.shape)) or "a scalar"
        raise VolumeError(
            f"the volume has {array.ndim} dimension(s) ({shape}); napari-g3dvit needs a 3D volume "
            "(D, H, W) or a 4D series of timepoints (T, D, H, W)"
        )
    if array.numel() == 0:
        raise VolumeError(
            f"the volume is empty (shape {'x'.join(map(str, array.shape))}); it needs voxels on every "
            "axis" + (" and at least one timepoint" if array.ndim == 4 else "")
        )
    array = array.to(torch.float32, copy=True)  # a copy: the caller's array is never changed
    bad = ~torch.isfinite(array)
    if bool(bad.any()):
        n_nan = int(torch.isnan(array).sum())
        raise VolumeError(
            f"the volume holds {n_nan} NaN and {int(bad.sum()) - n_nan} infinite voxel value(s); "
            "replace them (e.g. with numpy.nan_to_num) before explaining"
        )
    is_series = array.ndim == 4
    return (array if is_series else array[None]), is_series


def targets_for(target, count: int) -> torch.Tensor | None:
    """None, one class for all, or one class per timepoint -> [T] int64 (or None)."""
    if target is None:
        return None
    values = np.atleast_1d(np.asarray(target))
    if values.dtype.kind not in "iu" or values.ndim != 1:
        raise SettingsError(f"target must be None, a class index or one index per timepoint, got {target!r}")
    if values.size == 1:
        values = np.repeat(values, count)
    if values.size != count:
        raise SettingsError(f"{values.size} targets were given for {count} timepoints; give one per timepoint")
    if (values < 0).any():
        raise SettingsError(f"target classes are indices from 0; got {int(values.min())}")
    return torch.as_tensor(values, dtype=torch.int64)


def model_inputs(adapter, series: torch.Tensor) -> torch.Tensor:
    """[T, F, H, W] on the model's grid -> model inputs [T, C, F, H, W] (a single channel repeated)."""
    inputs = series[:, None]
    if adapter.geometry.channels != 1:
        inputs = inputs.expand(-1, adapter.geometry.channels, -1, -1, -1)
    return inputs


def preprocessing_of(model: nn.Module, preprocessing: dict | None) -> Preprocessing:
    """The given preprocessing spec, else the one in the model's config."""
    config = getattr(model, "g3dvit_config", None) or {}
    return Preprocessing.from_config(preprocessing if preprocessing is not None else config.get("preprocessing"))


# -- settings ------------------------------------------------------------------------------------------

def _check_choice(value, choices: Sequence, what: str) -> None:
    if value not in choices:
        raise SettingsError(f"unknown {what} {value!r}; choose one of: {', '.join(map(str, choices))}")


def _check_whole(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive whole number" if minimum == 1 else f"a whole number from {minimum}"
        raise SettingsError(f"{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class RunSettings:
    """Checked ``explain`` settings (see ``api.explain`` for each one's meaning)."""

    methods: tuple[str, ...]
    layers: tuple = (None,)  # layer specs (None = the default layer) for the CAM methods
    pooling: str = "mean"
    target: object = None
    threshold: float | None = DEFAULT_THRESHOLD
    upsample: str = "trilinear"
    device: object = None
    batch_size: int | None = None
    baseline: str | None = None
    steps: int = SETTINGS["steps"].default
    occlusion: str = SETTINGS["occlusion"].default
    relevance_block: int = SETTINGS["relevance_block"].default
    preprocessing: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.methods:
            raise SettingsError("no method was given; choose from: " + ", ".join(METHODS))
        for name in self.methods:
            spec(name)
        for name, setting in SETTINGS.items():  # the settings with a fixed list of choices
            if setting.choices is not None and name != "baseline":
                _check_choice(getattr(self, name), setting.choices, name.replace("_", " "))
        _check_choice(self.upsample, UPSAMPLE_MODES, "upsampling")
        if self.baseline is not None:
            _check_choice(self.baseline, SETTINGS["baseline"].choices, "baseline")
            refusing = [m for m in self.methods if "baseline" in spec(m).settings
                        and self.baseline not in baseline_choices(m)]
            if refusing:
                raise SettingsError(f"{refusing[0]} cannot use the baseline {self.baseline!r}; it takes: "
                                    f"{', '.join(baseline_choices(refusing[0]))}")
        threshold = self.threshold
        if threshold is not None and not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                                          and 0 < threshold <= 100):
            raise SettingsError(f"threshold is the percentage of token values kept, in (0, 100], or None; got {threshold!r}")
        if self.batch_size is not None:
            _check_whole(self.batch_size, "batch_size", 1)
        _check_whole(self.steps, "steps", 1)
        _check_whole(self.relevance_block, "relevance_block", 0)

    def explain_kwargs(self) -> dict:
        """The settings as ``explain`` keyword arguments (methods and layers excluded)."""
        return {"pooling": self.pooling, "target": self.target, "threshold": self.threshold,
                "upsample": self.upsample, "device": self.device, "batch_size": self.batch_size,
                "baseline": self.baseline, "steps": self.steps, "occlusion": self.occlusion,
                "relevance_block": self.relevance_block, "preprocessing": self.preprocessing}


# -- what a family pass gets and gives ------------------------------------------------------------------

@dataclass
class PassInput:
    """One batch as every family's pass sees it.

    inputs:  [b, C, F, H, W] model inputs on the run's device (the model is prepared).
    targets: [b] classes, or None for each input's predicted class.
    layers:  hooked layers of the CAM methods, {dotted name: module}.
    """

    adapter: object
    inputs: torch.Tensor
    targets: torch.Tensor | None
    settings: RunSettings
    layers: dict[str, nn.Module]


@dataclass
class MapPart:
    """One method's raw scores for a batch: ``scores`` [b, N] per patch token (or [b, F, H, W]
    per voxel); ``logits`` [b, K] and ``targets`` [b] of the unperturbed inputs; ``cost``
    counts to add up over batches (e.g. perturbed forwards)."""

    method: str
    layer: str
    scores: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    cost: dict = field(default_factory=dict)


def family_pass(family: str) -> Callable[[PassInput, list[str]], list[MapPart]]:
    module, name = FAMILY_PASSES[family].split(":")
    return getattr(import_module(module), name)


# -- the sink: raw scores -> the maps shown ---------------------------------------------------------

class _Maps:
    """Collects each (method, layer)'s maps over the batches and builds its ``Explanation``."""

    def __init__(self, settings: RunSettings, geometry, grid, prep: Preprocessing, volume_shape,
                 baselines: dict[str, str]):
        self.settings, self.geometry, self.grid = settings, geometry, grid
        self.prep, self.volume_shape, self.baselines = prep, volume_shape, baselines
        self.tokens: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.voxels: dict[tuple[str, str], list[torch.Tensor]] = {}
        self.raw_range: dict[tuple[str, str], tuple[float, float]] = {}
        self.raw: dict[tuple[str, str], list[torch.Tensor]] = {}  # raw token scores [b, N] per batch
        self.cost: dict[tuple[str, str], dict] = {}

    def add(self, part: MapPart) -> None:
        key = (part.method, part.layer)
        scores = part.scores.float()
        low, high = self.raw_range.get(key, (np.inf, -np.inf))
        self.raw_range[key] = (min(low, float(scores.min())), max(high, float(scores.max())))
        for name, value in part.cost.items():
            self.cost.setdefault(key, {})[name] = self.cost.get(key, {}).get(name, 0) + value
        threshold, patch = self.settings.threshold, self.geometry.patch_size
        if scores.ndim == 2:  # token scores
            raw = scores
            maps = keep_top_percent(normalise_tokens(scores), threshold).reshape(-1, *self.grid)
            voxels = tokens_to_voxels(maps, patch, self.settings.upsample)
        else:  # voxel attributions: the map at voxel resolution, token sums as the token map
            from .cam.perturbation import tokens_from_voxels

            flat = scores.reshape(len(scores), -1)
            voxels = keep_top_percent(normalise_tokens(flat), threshold).reshape(scores.shape)
            raw = tokens_from_voxels(scores, patch)
            maps = keep_top_percent(normalise_tokens(raw), threshold).reshape(-1, *self.grid)
        self.raw.setdefault(key, []).append(raw.detach().cpu())
        self.tokens.setdefault(key, []).append(maps.cpu())
        self.voxels.setdefault(key, []).append(self.prep.to_volume(voxels, self.volume_shape).cpu())

    def explanation(self, key, probabilities: torch.Tensor, targets: np.ndarray, is_series: bool,
                    device: torch.device) -> Explanation:
        method, layer = key
        heat = torch.cat(self.voxels[key]).numpy().astype(np.float32)
        tokens = torch.cat(self.tokens[key]).numpy().astype(np.float32)
        if not heat.any():
            warnings.warn(_empty_map_reason(method, layer, *self.raw_range[key]), RuntimeWarning, stacklevel=4)
        s = self.settings
        extra = dict(self.cost.get(key, {}))
        extra.update(s.extra)
        if method in self.baselines:
            extra.setdefault("baseline", self.baselines[method])
        return Explanation(
            heatmap=heat if is_series else heat[0],
            token_map=tokens if is_series else tokens[0],
            target=targets.astype(np.int64) if is_series else int(targets[0]),
            probabilities=(probabilities if is_series else probabilities[0]).numpy(),
            method=method, layer=layer, pooling=s.pooling,
            threshold=None if s.threshold is None else float(s.threshold),
            upsample=s.upsample, device=str(device), extra=extra)


def _empty_map_reason(method: str, layer: str, low: float, high: float) -> str:
    """Why a map came out zero everywhere, judged from the raw token scores actually seen."""
    head = f"the {method} map at layer {layer!r} is zero everywhere"
    if high < 0 or (high == 0 and low < 0):
        return (f"{head}: every token's score was negative (from {low:.3g} to {high:.3g}), and only "
                "positive evidence is kept (ReLU). At this layer the target class gains where the "
                "tokens shrink; try another target class, layer or method")
    if high == low == 0:
        reason = ("every token's score was exactly 0. For g3dvit this happens at residual-stream "
                  "layers (their gradients average to zero over channels) and at a LayerNorm whose "
                  "affine is still the identity (an untrained layer); use the default layer or another "
                  "method" if method == "g3dvit" else "every token's score was exactly 0")
        return f"{head}: {reason}"
    return (f"{head}: every token had the same score ({high:.3g}), so the map has no location; try "
            "another layer or method")



# -- the run ---------------------------------------------------------------------------------------------

def explain_methods(model: nn.Module, volume, settings: RunSettings,
                    progress: Callable[[int, int], None] | None = None,
                    raw: dict | None = None) -> dict[tuple[str, str], Explanation]:
    """Every requested (method, layer) map of ``volume``: {(method, layer): Explanation}, in the
    order the methods and layers were asked for. Given a dict ``raw``, it also receives each
    map's raw token scores [T, N] (signed, before ReLU and normalisation)."""
    adapter = find_adapter(model)
    prep = preprocessing_of(model, settings.preprocessing)
    series, is_series = as_series(volume)
    volume_shape = tuple(series.shape[1:])
    series = prep.to_model(series, adapter.geometry.input_shape)
    grid = adapter.geometry.grid_for(tuple(series.shape[1:]))
    count = series.shape[0]
    targets = targets_for(settings.target, count)
    dev = resolve_device(settings.device)
    grouped = families(settings.methods)

    layers: dict[str, nn.Module] = {}
    if any(spec(m).family == "cam" for m in settings.methods):
        for layer in settings.layers:
            name, module = resolve_layer(model, adapter.default_layer if layer is None else layer)
            layers[name] = module
    baselines = {m: spec(m).baseline_for(settings.baseline, adapter.normalises_raw_patches)
                 for m in settings.methods if "baseline" in spec(m).settings}
    sink = _Maps(settings, adapter.geometry, grid, prep, volume_shape, baselines)
    chunk = settings.batch_size or DEFAULT_BATCH_SIZE
    logits_parts, target_parts = [], []
    with prepared_model(model, dev):
        for start in range(0, count, chunk):
            inputs = model_inputs(adapter, series[start : start + chunk]).to(dev)
            part_targets = None if targets is None else targets[start : start + chunk].to(dev)
            last = None
            for family, methods in grouped.items():
                run_settings = settings
                if methods[0] in baselines:  # a pass of one baseline-reading method gets its own
                    run_settings = replace(settings, methods=tuple(methods), baseline=baselines[methods[0]])
                batch = PassInput(adapter, inputs, part_targets, run_settings, layers)
                for part in family_pass(family)(batch, methods):
                    sink.add(part)
                    last = part
                if last is not None:  # later families explain the classes the first one resolved
                    part_targets = last.targets
            logits_parts.append(last.logits.detach().float().cpu())
            target_parts.append(last.targets.detach().cpu())
            if progress is not None:
                progress(min(start + chunk, count), count)

    logits = torch.cat(logits_parts)
    probabilities = class_probabilities(logits[:, None] if logits.ndim == 1 else logits)
    used_targets = torch.cat(target_parts).numpy()
    keys = [(m, n) for m in settings.methods for n in (layers if spec(m).family == "cam" else
                                                      [k[1] for k in sink.tokens if k[0] == m])]
    if raw is not None:
        raw.update({key: torch.cat(sink.raw[key]) for key in keys})
    return {key: sink.explanation(key, probabilities, used_targets, is_series, dev) for key in keys}
