"""The public entry points: ``explain`` (a 3D ViT and a volume in, maps out) and ``token_layers``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .cam.engine import prepared_model
from .devices import available_devices, resolve_device
from .explaining import DEFAULT_BATCH_SIZE, RunSettings, explain_methods
from .front import front
from .models import find_adapter
from .models.layers import probe_token_layers
from .options import DEFAULT_THRESHOLD
from .registry import AUTO, SETTINGS

__all__ = ["explain", "token_layers", "describe_model", "ModelSummary", "resolve_device", "available_devices",
           "DEFAULT_BATCH_SIZE"]


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
    block_names: tuple[str, ...] = ()  # the ViT's blocks, first to last

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
        block_names=tuple(adapter.blocks),
    )


def explain(
    model: nn.Module,
    volume,
    method: str | Sequence[str] = AUTO,
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
    steps: int = SETTINGS["steps"].default,
    occlusion: str = SETTINGS["occlusion"].default,
    relevance_block: int = SETTINGS["relevance_block"].default,
    choice=None,
    rechoose: bool = False,
):
    """Class-activation map(s) of ``volume`` under ``model``.

    model:      an nn.Module that is, or contains, a vit-pytorch 3D ViT or a MONAI ViT; the
                score is the whole module's output for the target class.
    volume:     array or tensor (D, H, W), or (T, D, H, W) for a series of timepoints; in the
                model's input size, or any size its config's preprocessing turns into it. Or a
                NIfTI path or nibabel image: resampled into the model's ``input_space``, and the
                maps come back on its own grid (``models/space.py``).
    method:     ``"auto"`` (the default: the most faithful candidate on this volume, chosen once
                per model and input shape and then reused, see ``choice.py``), one of
                ``METHODS`` (``"g3dvit"`` is the published procedure; ``registry.py`` describes
                each), or a list of methods (each family computed once for all).
    layer:      for the CAM methods: None for the last block's attention-input LayerNorm, a
                dotted name, a module, or a list of those (computed from the same pass). Other
                methods use no single layer and ignore it.
    target:     None (each volume's predicted class), a class index, or one per timepoint.
    threshold:  percentage of the highest token values kept; None keeps all.
    progress:   called as ``progress(done, total)`` after each batch of timepoints; raising
                from it stops the run.
    preprocessing: a spec (axes, crop, resample, normalize) overriding the one in the model's
                config; the heatmap always comes back on the volume's own voxels.
    baseline:   how occlusion removes a token (``"drop"``: left out of the sequence, its default;
                or a painted ``BASELINES`` value: mean, zero, blur, in the model's input space);
                where integrated gradients start (default: a blurred copy for vit-pytorch
                models, whose patch embedding normalises each raw patch, else zero); what GradMask
                masks with (default mean); for ``auto``, the removal of its criterion.
    steps:      integrated gradients: points on the path.
    occlusion:  ``fast`` (every token estimated from one backward, the strongest measured),
                ``full`` (every token on its own, N forwards per volume) or ``estimate``.
    relevance_block: cp-lrp: read the relevance at this block's input (0: the transformer's input).
    choice:     ``auto`` only: a ``MethodChoice`` to use as it is (e.g. made once for a cohort).
    rechoose:   ``auto`` only: choose afresh instead of reusing the choice made earlier for this
                model and input shape.

    Returns an ``Explanation``; a list of methods gives ``{method: Explanation}``, a list of
    layers ``{layer: Explanation}``, and both ``{(method, layer): Explanation}``.
    """
    placed = front(explain, locals())  # NIfTI into the model's space, misfits named, mps -> cpu
    if placed is not None:
        return placed
    common = dict(pooling=pooling, target=target, threshold=threshold, upsample=upsample, device=device,
                  batch_size=batch_size, baseline=baseline, steps=steps, occlusion=occlusion,
                  relevance_block=relevance_block, preprocessing=preprocessing)
    if isinstance(method, str) and method == AUTO:
        from .choice import explain_auto

        return explain_auto(model, volume, choice=choice, rechoose=rechoose, progress=progress, **common)
    methods = (method,) if isinstance(method, str) else tuple(dict.fromkeys(method))
    single_layer = layer is None or isinstance(layer, (str, nn.Module))
    layers = (layer,) if single_layer else tuple(layer)
    settings = RunSettings(methods=methods, layers=layers, **common)
    maps = explain_methods(model, volume, settings, progress=progress)
    many_methods = not isinstance(method, str)
    if many_methods and not single_layer:
        return maps
    if many_methods:
        return {m: exp for (m, _), exp in maps.items()}
    if not single_layer:
        return {n: exp for (_, n), exp in maps.items()}
    return next(iter(maps.values()))
