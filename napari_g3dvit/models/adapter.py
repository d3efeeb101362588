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
    """Base of the adapters: ``model`` holds ``vit`` under the dotted ``prefix``.

    Subclasses name the ViT's parts in ``model``'s dotted names: ``blocks`` (first to last),
    ``readout`` (the ViT's classifier) and ``attention_norm(i)`` (the LayerNorm at the input of
    block ``i``'s attention).
    """

    architecture = ""

    def __init__(self, model: nn.Module, prefix: str, vit: nn.Module):
        self.model, self.prefix, self.vit = model, prefix, vit

    @property
    def blocks(self) -> list[str]:
        raise NotImplementedError

    @property
    def readout(self) -> str:
        raise NotImplementedError

    def attention_norm(self, block: int) -> str:
        raise NotImplementedError

    @property
    def default_layer(self) -> str:
        """The LayerNorm at the input of the last block's attention, as published."""
        return self.attention_norm(len(self.blocks) - 1)

    @staticmethod
    def logits(output) -> torch.Tensor:
        return class_scores(output)

    def supports_cls_fast_path(self, hooked: list[nn.Module]) -> bool:
        return False
