"""Which layers of a model output a token sequence, and naming them."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LayerError


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) for a layer given by dotted name or as the module itself."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name, module
        raise LayerError(
            f"the given {type(layer).__name__} is not part of this model; pass one of its "
            "own modules or a dotted name from napari_g3dvit.token_layers(model)"
        )
    if not isinstance(layer, str):
        raise LayerError(f"a layer is a dotted name or a module, not {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        near = [n for n in modules if n and n.endswith(layer.split(".")[-1])][:5]
        hint = f"; similar names: {', '.join(near)}" if near else ""
        raise LayerError(f"this model has no layer named {layer!r}{hint}")
    return layer, modules[layer]


def is_token_sequence(output: object, batch: int, num_tokens: int, num_patches: int) -> bool:
    """True for a tensor ``[B, T, C]`` whose T is the full sequence or the patches alone."""
    return (
        torch.is_tensor(output)
        and output.ndim == 3
        and output.shape[0] == batch
        and output.shape[1] in (num_tokens, num_patches)
    )


def probe_token_layers(model: nn.Module, adapter, device: torch.device) -> tuple[list[tuple[str, tuple[int, int]]], int]:
    """Run one input through ``model`` and list the layers whose output is a token sequence.

    Returns ``([(dotted_name, (tokens, channels)), ...], number of classes)``, the layers in the
    order they run.
    """
    geometry = adapter.geometry
    seen: dict[str, tuple[int, int]] = {}
    handles = []

    def recorder(name: str):
        def hook(_module, _inputs, output):
            if name not in seen and is_token_sequence(
                output, 1, geometry.num_tokens, geometry.num_patches
            ):
                seen[name] = (int(output.shape[1]), int(output.shape[2]))

        return hook

    for name, module in model.named_modules():
        if name and module is not adapter.vit:
            handles.append(module.register_forward_hook(recorder(name)))
    probe = torch.zeros((1, geometry.channels, *geometry.probe_shape()), device=device)
    try:
        with torch.inference_mode():
            logits = adapter.logits(model(probe))
    finally:
        for handle in handles:
            handle.remove()
    return list(seen.items()), int(logits.shape[-1]) if logits.ndim > 1 else 1
