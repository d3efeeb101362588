"""What every ViT adapter shares: reading class scores and recognising its model class.

An adapter owns every architecture detail the methods need (where the blocks, attention
probabilities, fused Q/K/V projections and the transformer's input tokens are), so that a
method never asks which architecture it runs on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ModelError

#: fn(tokens [B, T, C]) -> tokens [B, T', C]: what a token-entry hook does to the transformer's input
TokenEdit = Callable[[torch.Tensor], torch.Tensor]


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

    @contextmanager
    def cls_fast_path(self) -> Iterator[None]:
        yield

    def forward(self, inputs: torch.Tensor, fast: bool = True) -> torch.Tensor:
        """Class scores [B, K] of ``inputs`` [B, C, F, H, W] under the whole model (the CLS fast
        path when ``fast`` and it holds with no layer hooked)."""
        if fast and self.supports_cls_fast_path([]):
            with self.cls_fast_path():
                output = self.model(inputs)
        else:
            output = self.model(inputs)
        logits = self.logits(output)
        return logits[:, None] if logits.ndim == 1 else logits

    # -- where the methods look ---------------------------------------------------------------

    def _attention_modules(self) -> list:
        raise NotImplementedError

    def attention_probability_modules(self) -> list[nn.Module]:
        """The module of each block (first to last) whose forward output is that block's
        attention probabilities [B, heads, T, T]."""
        modules = self._attention_modules()
        if not modules or any(not isinstance(m, nn.Module) for m in modules):
            raise ModelError("this ViT's blocks do not all have the module that holds their attention "
                             "probabilities, so its attention cannot be read")
        return modules

    @contextmanager
    def explicit_attention(self) -> Iterator[None]:
        """While inside, every block computes its attention probabilities explicitly (no fused kernel)."""
        yield

    def _qkv_modules(self) -> list:
        raise NotImplementedError

    def qkv_modules(self) -> list[nn.Module]:
        """The fused Q/K/V projection of every block, first to last (outputs [B, T, 3 * inner])."""
        found = self._qkv_modules()
        if not found or any(not isinstance(m, nn.Module) for m in found):
            raise ModelError("this ViT's blocks do not all have a fused Q/K/V projection")
        return found

    @property
    def heads(self) -> int:
        raise NotImplementedError

    def _entry_module(self) -> tuple[nn.Module, bool]:
        """(module, output): the transformer's input tokens are that module's output (True) or
        its first positional input (False)."""
        raise NotImplementedError

    def token_entry_hook(self, edit: TokenEdit):
        """Hook ``edit`` onto the transformer's input tokens [B, T, C] (patch embedding plus
        position embedding, CLS first, after the embedding dropout). Returns the handle."""
        module, output = self._entry_module()
        if output:
            return module.register_forward_hook(lambda _m, _args, out: edit(out))
        return module.register_forward_pre_hook(lambda _m, args: (edit(args[0]), *args[1:]))

    @property
    def normalises_raw_patches(self) -> bool:
        """Whether the patch embedding starts with a LayerNorm over each patch's raw voxels."""
        return False

    @property
    def mean_pooled(self) -> bool:
        """Whether the readout averages all output tokens (else it reads the CLS token)."""
        return False

    def sequence_output_module(self) -> nn.Module:
        """A module whose output is the last block's token sequence [B, T, C] (before pooling)."""
        raise NotImplementedError

    def block_input_module(self, block: int) -> nn.Module:
        """A module whose first input is exactly the residual stream entering ``block`` (its
        attention-input LayerNorm, called in every forward path)."""
        modules = dict(self.model.named_modules())
        return modules[self.attention_norm(block)]
