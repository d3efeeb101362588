"""The public entry points: ``explain`` (a 3D ViT and a volume in, maps out) and ``token_layers``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .cam.engine import prepared_model, run_capture
from .cam.methods import TOKEN_SCORES
from .cam.postprocess import keep_top_percent, normalise_tokens, tokens_to_voxels
from .cam.result import class_probabilities
from .devices import available_devices, resolve_device  # noqa: F401  (also imported from here)
from .errors import SettingsError, VolumeError
from .explanation import Explanation
from .front import front
from .models import find_adapter
from .models.layers import probe_token_layers, resolve_layer
from .models.preprocessing import Preprocessing
from .cam.attention import attention_scores
from .cam.gradmask import gradmask_scores
from .cam.perturbation import (
    integrated_gradients,
    normalises_raw_patches,
    occlusion_scores,
    tokens_from_voxels,
)
from .options import (
    ATTENTION_METHODS,
    AUTO,
    BASELINES,
    CAM_METHODS,
    DEFAULT_THRESHOLD,
    METHOD_LAYERS,
    METHODS,
    OCCLUSION_MODES,
    POOLINGS,
    UPSAMPLE_MODES,
)

DEFAULT_BATCH_SIZE = 8


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


def _as_series(volume) -> tuple[torch.Tensor, bool]:
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


def _check_choice(value, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise SettingsError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _targets(target, count: int) -> torch.Tensor | None:
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


def token_layers(model: nn.Module, device: str | torch.device | None = "cpu") -> list[tuple[str, tuple[int, int]]]:
    """Layers of ``model`` whose output is a token sequence of its ViT.

    Returns ``[(dotted_name, (tokens, channels)), ...]`` in the order they run; any of the names
    can be passed to ``explain(..., layer=name)``.
    """
    adapter = find_adapter(model)
    dev = resolve_device(device)
    with prepared_model(model, dev):
        return probe_token_layers(model, adapter, dev)[0]


@dataclass(frozen=True)
class ModelSummary:
    """What a person choosing settings needs to know about a model."""

    architecture: str
    input_shape: tuple[int, int, int] | None
    patch_size: tuple[int, int, int]
    class_names: tuple[str, ...]
    parameters: int
    default_layer: str
    layers: tuple[str, ...]

    def line(self, device: str) -> str:
        size = "x".join(map(str, self.input_shape)) if self.input_shape else "any multiple of the patch"
        return (f"{self.architecture}, input {size}, {len(self.class_names)} classes, "
                f"{self.parameters / 1e6:.2f} M parameters, {device}")


def describe_model(model: nn.Module) -> ModelSummary:
    """Architecture, input size, class names, size and hookable layers (one probe forward on the
    model's own device)."""
    adapter = find_adapter(model)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    with prepared_model(model, dev):
        layers, classes = probe_token_layers(model, adapter, dev)
    names = (getattr(model, "g3dvit_config", None) or {}).get("class_names") or []
    if len(names) != classes:
        names = [f"class {i}" for i in range(classes)]
    return ModelSummary(
        architecture=adapter.architecture,
        input_shape=adapter.geometry.input_shape,
        patch_size=adapter.geometry.patch_size,
        class_names=tuple(names),
        parameters=sum(p.numel() for p in model.parameters()),
        default_layer=adapter.default_layer,
        layers=tuple(name for name, _ in layers),
    )


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


def explain(
    model: nn.Module,
    volume,
    method: str | Sequence[str] = "g3dvit",
    layer: str | nn.Module | Sequence[str | nn.Module] | None = None,
    pooling: str = "mean",
    target: int | Sequence[int] | None = None,
    threshold: float | None = DEFAULT_THRESHOLD,
    upsample: str = "trilinear",
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    preprocessing: dict | None = None,
    baseline: str | None = None,
    steps: int = 32,
    occlusion: str = "fast",
):
    """Class-activation map(s) of ``volume`` under ``model``.

    model:      an nn.Module that is, or contains, a vit-pytorch 3D ViT; the score is the whole
                module's output for the target class.
    volume:     array or tensor (D, H, W), or (T, D, H, W) for a series of timepoints; in the
                model's input size, or any size its config's preprocessing turns into it. Or a
                NIfTI path or nibabel image: resampled into the model's ``input_space``, and the
                maps come back on its own grid (``models/space.py``).
    method:     one of ``METHODS``, ``"auto"`` (the most faithful candidate on this volume, see
                ``choose_method``), or a list of methods (each family computed once for all).
    layer:      for the CAM methods: None for the last block's attention-input LayerNorm, a
                dotted name, a module, or a list of those (computed from the same pass). The
                attention and perturbation methods use no single layer and ignore it.
    target:     None (each volume's predicted class), a class index, or one per timepoint.
    threshold:  percentage of the highest token values kept; None keeps all.
    progress:   called as ``progress(done, total)`` after each batch of timepoints; raising
                from it stops the run.
    preprocessing: a spec (axes, crop, resample, normalize) overriding the one in the model's
                config; the heatmap always comes back on the volume's own voxels.
    baseline:   occlusion and integrated gradients: what removed voxels become / where the path
                starts (``BASELINES``: mean, zero, blur; in the model's input space). None: the
                volume's mean for occlusion; for integrated gradients a blurred copy when the
                model normalises each raw patch (vit-pytorch, where a zero or mean path only
                rescales patches it cannot see), else zero.
    steps:      integrated gradients: points on the path.
    occlusion:  ``fast`` (coarse windows refined where the drop is large) or ``full`` (every
                token on its own, N forwards per volume).

    Returns an ``Explanation``; a list of methods gives ``{method: Explanation}``, a list of
    layers ``{layer: Explanation}``, and both ``{(method, layer): Explanation}``.
    """
    placed = front(explain, locals())  # NIfTI into the model's space, misfits named, mps -> cpu
    if placed is not None:
        return placed
    if isinstance(method, str) and method == AUTO:
        from .choice import explain_auto

        return explain_auto(model, volume, layer=layer, pooling=pooling, target=target, threshold=threshold,
                            upsample=upsample, device=device, batch_size=batch_size, progress=progress,
                            preprocessing=preprocessing, baseline=baseline, steps=steps, occlusion=occlusion)
    methods = [method] if isinstance(method, str) else list(dict.fromkeys(method))
    for name in methods:
        _check_choice(name, METHODS, "method")
    if not methods:
        raise SettingsError("no method was given; choose from: " + ", ".join(METHODS))
    _check_choice(pooling, POOLINGS, "pooling")
    _check_choice(upsample, UPSAMPLE_MODES, "upsampling")
    if baseline is not None:
        _check_choice(baseline, BASELINES, "baseline")
    _check_choice(occlusion, OCCLUSION_MODES, "occlusion mode")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold <= 100):
        raise SettingsError(f"threshold is the percentage of token values kept, in (0, 100], or None; got {threshold!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise SettingsError(f"batch_size must be a positive whole number, got {batch_size!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SettingsError(f"steps must be a positive whole number, got {steps!r}")

    adapter = find_adapter(model)
    config = getattr(model, "g3dvit_config", None) or {}
    prep = Preprocessing.from_config(preprocessing if preprocessing is not None else config.get("preprocessing"))
    series, is_series = _as_series(volume)
    volume_shape = tuple(series.shape[1:])
    series = prep.to_model(series, adapter.geometry.input_shape)
    grid = adapter.geometry.grid_for(tuple(series.shape[1:]))
    count = series.shape[0]
    targets = _targets(target, count)
    dev = resolve_device(device)

    cam = [m for m in methods if m in CAM_METHODS]
    attention = [m for m in methods if m in ATTENTION_METHODS]
    hooked: dict[str, nn.Module] = {}
    if cam:
        layer_list = [layer] if layer is None or isinstance(layer, (str, nn.Module)) else list(layer)
        for spec in layer_list:
            name, module = resolve_layer(model, adapter.default_layer if spec is None else spec)
            hooked[name] = module

    chunk = batch_size or DEFAULT_BATCH_SIZE
    num_patches = adapter.geometry.num_patches
    keys = [(m, n) for m in cam for n in hooked] + [(m, METHOD_LAYERS[m]) for m in methods if m not in CAM_METHODS]
    token_maps: dict[tuple[str, str], list[torch.Tensor]] = {k: [] for k in keys}
    voxel_maps: dict[tuple[str, str], list[torch.Tensor]] = {k: [] for k in keys}
    logits_parts, target_parts = [], []
    raw_range: dict[tuple[str, str], tuple[float, float]] = {}  # lowest, highest raw token score
    extra: dict[tuple[str, str], dict] = {k: {} for k in keys}

    def add_tokens(key: tuple[str, str], scores: torch.Tensor) -> None:
        """Raw token scores [b, N] -> kept token map and voxel map on the volume's grid."""
        low, high = raw_range.get(key, (np.inf, -np.inf))
        raw_range[key] = (min(low, float(scores.min())), max(high, float(scores.max())))
        maps = keep_top_percent(normalise_tokens(scores.float()), threshold).reshape(-1, *grid)
        token_maps[key].append(maps.cpu())
        voxels = tokens_to_voxels(maps, adapter.geometry.patch_size, upsample)
        voxel_maps[key].append(prep.to_volume(voxels, volume_shape).cpu())

    def add_voxels(key: tuple[str, str], attributions: torch.Tensor) -> None:
        """Voxel attributions [b, F, H, W] (model grid) -> voxel map, and its token sums as token map."""
        low, high = raw_range.get(key, (np.inf, -np.inf))
        raw_range[key] = (min(low, float(attributions.min())), max(high, float(attributions.max())))
        flat = attributions.float().reshape(len(attributions), -1)
        voxels = keep_top_percent(normalise_tokens(flat), threshold).reshape(attributions.shape)
        voxel_maps[key].append(prep.to_volume(voxels, volume_shape).cpu())
        tokens = tokens_from_voxels(attributions.float(), adapter.geometry.patch_size)
        token_maps[key].append(keep_top_percent(normalise_tokens(tokens), threshold).reshape(-1, *grid).cpu())

    with prepared_model(model, dev):
        for start in range(0, count, chunk):
            inputs = series[start : start + chunk, None].to(dev)  # [b, 1, D, H, W]
            if adapter.geometry.channels != 1:
                inputs = inputs.expand(-1, adapter.geometry.channels, -1, -1, -1)
            part_targets = None if targets is None else targets[start : start + chunk].to(dev)
            logits = None
            if cam:  # one forward and one stopped backward for every CAM method and layer
                capture = run_capture(adapter, inputs, hooked, part_targets)
                logits, part_targets = capture.logits, capture.targets
                for m, n in [k for k in keys if k[0] in CAM_METHODS]:
                    add_tokens((m, n), TOKEN_SCORES[m](capture.activations[n], capture.gradients[n],
                                                       num_patches, pooling))
                del capture
            if attention:  # one forward (and one backward) for every attention method
                found = attention_scores(adapter, inputs, attention, part_targets)
                for m in attention:
                    add_tokens((m, METHOD_LAYERS[m]), found[m].scores)
                first = found[attention[0]]
                logits, part_targets = first.logits, first.targets
            if "occlusion" in methods:
                occluded = occlusion_scores(adapter, inputs, part_targets, baseline=baseline or "mean", mode=occlusion)
                add_tokens(("occlusion", METHOD_LAYERS["occlusion"]), occluded.scores)
                logits, part_targets = occluded.logits, occluded.targets
                cost = extra[("occlusion", METHOD_LAYERS["occlusion"])]
                cost["forwards"] = cost.get("forwards", 0) + occluded.cost.perturbed
            if "gradmask" in methods:
                masked = gradmask_scores(adapter, inputs, part_targets, baseline=baseline or "mean")
                add_tokens(("gradmask", METHOD_LAYERS["gradmask"]), masked.scores)
                logits, part_targets = masked.logits, masked.targets
                cost = extra[("gradmask", METHOD_LAYERS["gradmask"])]
                cost["forwards"] = cost.get("forwards", 0) + masked.masks * len(inputs)
            if "integrated-gradients" in methods:
                start_from = baseline or ("blur" if normalises_raw_patches(adapter) else "zero")
                integrated = integrated_gradients(adapter, inputs, part_targets, baseline=start_from, steps=steps)
                add_voxels(("integrated-gradients", METHOD_LAYERS["integrated-gradients"]), integrated.scores)
                logits, part_targets = integrated.logits, integrated.targets
            logits_parts.append(logits.detach().float().cpu())
            target_parts.append(part_targets.detach().cpu())
            if progress is not None:
                progress(min(start + chunk, count), count)

    logits = torch.cat(logits_parts)
    if logits.ndim == 1:
        logits = logits[:, None]
    probabilities = class_probabilities(logits)
    used_targets = torch.cat(target_parts).numpy()

    def result(key: tuple[str, str]) -> Explanation:
        m, n = key
        heat = torch.cat(voxel_maps[key]).numpy().astype(np.float32)
        tokens = torch.cat(token_maps[key]).numpy().astype(np.float32)
        if not heat.any():
            warnings.warn(_empty_map_reason(m, n, *raw_range[key]), RuntimeWarning, stacklevel=3)
        return Explanation(
            heatmap=heat if is_series else heat[0],
            token_map=tokens if is_series else tokens[0],
            target=used_targets.astype(np.int64) if is_series else int(used_targets[0]),
            probabilities=(probabilities if is_series else probabilities[0]).numpy(),
            method=m,
            layer=n,
            pooling=pooling,
            threshold=None if threshold is None else float(threshold),
            upsample=upsample,
            device=str(dev),
            extra=extra[key],
        )

    many_methods = not isinstance(method, str)
    many_layers = not (layer is None or isinstance(layer, (str, nn.Module)))
    if many_methods and many_layers:
        return {k: result(k) for k in keys}
    if many_methods:
        return {m: result((m, n)) for m, n in keys}
    if many_layers:
        return {n: result((m, n)) for m, n in keys}
    return result(keys[0])
