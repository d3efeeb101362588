"""Pieces shared by every model builder: the classifier wrapper, splitting a state dict into
the ViT's tensors and a head's, and strict loading with errors that name each tensor.

Both builders (``loading`` for vit-pytorch, ``monai_vit`` for MONAI) import from here, and
nothing here imports them.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from ..errors import ModelError
from .adapter import class_scores


class ViTClassifier(nn.Module):
    """A 3D ViT, optionally followed by a classifier head: [B, C, F, H, W] -> logits [B, K].

    ``g3dvit_config`` holds the validated config (preprocessing, class names, ...).
    """

    def __init__(self, vit: nn.Module, head: nn.Module | None, config: dict):
        super().__init__()
        self.vit = vit
        self.head = head if head is not None else nn.Identity()
        self.g3dvit_config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(class_scores(self.vit(x)))


# -- splitting a state dict -------------------------------------------------------------------

def natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def split_vit(tensors: Mapping[str, torch.Tensor], anchor: str, source: str) -> tuple[dict, dict]:
    """(ViT tensors without their prefix, all other tensors), finding the ViT by ``anchor``."""
    anchors = [k for k in tensors if k == anchor or k.endswith("." + anchor)]
    if not anchors:
        sample = ", ".join(sorted(tensors)[:6])
        raise ModelError(
            f"{source} does not hold a 3D ViT of the configured kind: no '{anchor}' tensor "
            f"(it has {len(tensors)} tensors such as {sample})"
        )
    if len(anchors) > 1:
        raise ModelError(f"{source} holds several ViTs ({', '.join(anchors)}); keep one per file")
    prefix = anchors[0][: -len(anchor)]
    vit = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    rest = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
    return vit, rest


def head_layers(rest: Mapping[str, torch.Tensor], source: str) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """The tensors after the ViT as a chain of Linear layers: [(module path, weight, bias)]."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in rest.items():
        module, _, leaf = key.rpartition(".")
        groups.setdefault(module, {})[leaf] = value
    layers = []
    for module in sorted(groups, key=natural_key):
        parts = groups[module]
        weight = parts.pop("weight", None)
        bias = parts.pop("bias", None)
        if weight is None or weight.ndim != 2 or parts or (bias is not None and bias.shape != weight.shape[:1]):
            names = ", ".join(f"{module}.{leaf}" for leaf in groups[module])
            raise ModelError(
                f"{source} holds tensors outside the ViT that are not a Linear layer of a classifier "
                f"head: {names}"
            )
        layers.append((module, weight, bias))
    return layers


# -- config inference -------------------------------------------------------------------------

def load_strict(module: nn.Module, tensors: Mapping[str, torch.Tensor], what: str, source: str) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:6])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected[:6])}")
        raise ModelError(f"{source} does not match the {what} its config describes: {'; '.join(parts)}")
    for key, value in expected.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise ModelError(
                f"{source}: tensor '{key}' has shape {tuple(tensors[key].shape)}, but the {what} "
                f"its config describes needs {tuple(value.shape)}"
            )
    module.load_state_dict(dict(tensors), strict=True)
