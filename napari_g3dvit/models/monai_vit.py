"""MONAI's ViT (``monai.networks.nets.ViT``, classification mode) as the engine sees it.

Token sequence ``[B, 1 + N, hidden]``: CLS first, then the patches of a strided Conv3d,
flattened in ``(d h w)`` order, so the grid comes out in input-axis order. The model returns
``(logits, hidden_states)``. MONAI is an optional dependency (``pip install monai``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from ..errors import ModelError
from .adapter import ViTAdapter, defined_in
from .geometry import TokenGeometry

MONAI_VIT_MODULE = "monai.networks.nets.vit"
REQUIRED = ("in_channels", "img_size", "patch_size", "hidden_size", "mlp_dim", "num_layers",
            "num_heads", "num_classes")


def is_monai_vit(module: nn.Module) -> bool:
    return defined_in(module, MONAI_VIT_MODULE)


class MonaiViT(ViTAdapter):
    """Adapter for a model that is, or contains, a MONAI ViT with a classification head."""

    architecture = "monai-vit"

    def __init__(self, model: nn.Module, prefix: str, vit: nn.Module):
        if not hasattr(vit, "cls_token") or not hasattr(vit, "classification_head"):
            raise ModelError("this MONAI ViT was built without classification=True, so it has no class score to explain")
        conv = vit.patch_embedding.patch_embeddings
        if not isinstance(conv, nn.Conv3d):
            raise ModelError("napari-g3dvit supports MONAI ViTs with proj_type='conv' (3D patches)")
        super().__init__(model, prefix, vit)
        shape = getattr(vit, "g3dvit_input_shape", None)
        self.geometry = TokenGeometry(
            patch_size=tuple(int(k) for k in conv.kernel_size),
            num_patches=int(vit.patch_embedding.position_embeddings.shape[1]),
            num_prefix=int(vit.cls_token.shape[1]),
            channels=int(conv.in_channels),
            input_shape=tuple(int(s) for s in shape) if shape is not None else None,
        )

    @property
    def blocks(self) -> list[str]:
        return [f"{self.prefix}blocks.{i}" for i in range(len(self.vit.blocks))]

    @property
    def readout(self) -> str:
        return f"{self.prefix}classification_head"

    def attention_norm(self, block: int) -> str:
        return f"{self.blocks[block]}.norm1"

    def _attention_modules(self) -> list:
        # SABlock computes its softmax inline and passes the probabilities through drop_weights,
        # a Dropout that in eval mode returns the very tensor MONAI computed
        return [getattr(getattr(block, "attn", None), "drop_weights", None) for block in self.vit.blocks]

    @contextmanager
    def explicit_attention(self) -> Iterator[None]:
        """Blocks built with flash attention never materialise their probabilities: switch them
        to MONAI's explicit branch (the same attention) while inside."""
        switched = [block.attn for block in self.vit.blocks if getattr(block.attn, "use_flash_attention", False)]
        try:
            for attn in switched:
                attn.use_flash_attention = False
            yield
        finally:
            for attn in switched:
                attn.use_flash_attention = True

    def _qkv_modules(self) -> list:
        return [getattr(getattr(block, "attn", None), "qkv", None) for block in self.vit.blocks]

    @property
    def heads(self) -> int:
        return int(self.vit.blocks[0].attn.num_heads)

    def _entry_module(self) -> tuple[nn.Module, bool]:
        # MONAI's forward concatenates the CLS token after the patch embedding: the first
        # block's input is the whole sequence
        return self.vit.blocks[0], False


def check_monai_section(section: Mapping | None) -> dict:
    if not isinstance(section, Mapping):
        raise ModelError("a monai-vit config needs a 'monai' object with the ViT's constructor arguments")
    missing = [k for k in REQUIRED if k not in section]
    if missing:
        raise ModelError(f"the config's 'monai' section still needs: {', '.join(missing)}")
    return dict(section)


def build_monai(tensors: Mapping[str, torch.Tensor], config: dict, source: str) -> nn.Module:
    """A ViTClassifier around a MONAI ViT holding ``tensors`` (strict)."""
    try:
        from monai.networks.nets import ViT
    except ImportError as err:
        raise ModelError("this checkpoint is a MONAI ViT; install MONAI first: pip install monai") from err
    from .building import ViTClassifier, head_layers, load_strict, split_vit
    from .preprocessing import Preprocessing

    kwargs = check_monai_section(config.get("monai"))
    kwargs["classification"] = True
    vit_t, rest = split_vit(tensors, "patch_embedding.position_embeddings", source)
    if rest:
        names = ", ".join(name for name, _, _ in head_layers(rest, source))
        raise ModelError(f"{source} holds tensors outside the MONAI ViT ({names}); heads after a MONAI ViT are not supported")
    try:
        vit = ViT(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelError(f"the config's 'monai' section does not make a MONAI ViT: {err}") from err
    load_strict(vit, vit_t, "MONAI ViT", source)
    size = kwargs["img_size"]
    vit.g3dvit_input_shape = tuple(size) if isinstance(size, (list, tuple)) else (size,) * 3
    cfg = dict(config, head=None)
    Preprocessing.from_config(cfg.get("preprocessing"))
    from .config import check_input_orientation, check_input_space

    check_input_orientation(cfg)
    check_input_space(cfg, vit.g3dvit_input_shape)
    return ViTClassifier(vit, None, cfg).eval()
