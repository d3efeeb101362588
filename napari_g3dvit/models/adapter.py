"""What every ViT adapter shares: reading class scores and recognising its model class."""

from __future__ import annotations

import torch
from torch import nn


def defined_in(module: nn.Module, module_name: str, class_name: str = "ViT") -> bool:
    """True when ``module`` is (a subclass of) ``module_name.class_name``, without importing it."""
    return any(c.__module__ == module_name and c.__name__ == class_name for c in type(module).__mro__)


def class_scores(output: torch.Tensor | tuple | list) -> torch.Tensor:
    """The class scores ``[B, K]`` from a model's output (MONAI returns ``(logits, hidden)``)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class ViTAdapter:
    """Base of the adapters: ``model`` holds ``vit`` under the dotted ``prefix``."""

    architecture = ""

    def __init__(self, model: nn.Module, prefix: str, vit: nn.Module):
        self.model, self.prefix, self.vit = model, prefix, vit

    @staticmethod
    def logits(output) -> torch.Tensor:
        return class_scores(output)

    def supports_cls_fast_path(self, hooked: list[nn.Module]) -> bool:
        return False
