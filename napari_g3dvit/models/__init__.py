"""What a model is to the engine: which ViT it holds, its token geometry, its layers."""

from __future__ import annotations

from torch import nn

from ..errors import ModelError
from .geometry import TokenGeometry
from .monai_vit import MonaiViT, is_monai_vit
from .vit_pytorch3d import VitPytorch3D, is_vit3d

__all__ = ["TokenGeometry", "VitPytorch3D", "MonaiViT", "find_adapter"]


def find_adapter(model: nn.Module) -> VitPytorch3D | MonaiViT:
    """The adapter for the first supported 3D ViT inside ``model`` (``model`` itself included)."""
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"expected a torch nn.Module holding a 3D ViT, got {type(model).__name__}; "
            "load a checkpoint with napari_g3dvit.load_model first"
        )
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if is_vit3d(module):
            return VitPytorch3D(model, prefix, module)
        if is_monai_vit(module):
            return MonaiViT(model, prefix, module)
    raise ModelError(
        f"no 3D Vision Transformer found inside this {type(model).__name__}: napari-g3dvit "
        "explains vit_pytorch.vit_3d.ViT and MONAI ViT models (alone or followed by a head)"
    )
