"""vit-pytorch's 3D ViT (``vit_pytorch.vit_3d.ViT``) as the engine sees it.

Token sequence: ``[B, 1 + N, dim]``, CLS first, then patches in ``(f h w)`` order (frames
slowest, width fastest), so a C-order reshape of the patch tokens gives the grid in input-axis
order. vit_pytorch itself is never imported here: it drags in torchvision, and a model that was
built with it has already imported it.
"""

from __future__ import annotations

import logging
import math
import sys
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .adapter import ViTAdapter, defined_in
from .geometry import TokenGeometry

VIT3D_MODULE = "vit_pytorch.vit_3d"
log = logging.getLogger("napari_g3dvit")


def _llvm_in_process() -> bool:
    """Whether an LLVM library is mapped into this process (Mesa's llvmpipe OpenGL, say)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:  # not Linux
        return False


def import_vit3d():
    """``vit_pytorch.vit_3d``, imported so that it cannot crash a running napari.

    vit-pytorch imports torchvision, which imports torch._dynamo, which imports triton when it
    is installed (CUDA builds of torch). Triton carries its own LLVM; loaded into a process
    where Mesa's software OpenGL (napari's canvas under Xvfb or without a GPU driver) already
    mapped libLLVM, it crashes the interpreter. napari-g3dvit never compiles kernels, so in
    that case triton is marked unavailable before the import, exactly as if it were absent.
    """
    if VIT3D_MODULE not in sys.modules and "triton" not in sys.modules and _llvm_in_process():
        sys.modules["triton"] = None
        log.info("an LLVM library (Mesa OpenGL) is loaded: triton is left out to avoid its LLVM clash")
    import vit_pytorch.vit_3d as vit_3d

    return vit_3d


def _defined_in_vit3d(obj: object) -> bool:
    return type(obj).forward.__module__ == VIT3D_MODULE


def is_vit3d(module: nn.Module) -> bool:
    """True for ``vit_pytorch.vit_3d.ViT`` and its subclasses."""
    return defined_in(module, VIT3D_MODULE)


class VitPytorch3D(ViTAdapter):
    """Adapter for a model that is, or contains, a vit-pytorch 3D ViT.

    ``prefix`` is the ViT's dotted name inside ``model`` followed by a dot ('' at the root).
    """

    architecture = "vit-pytorch-3d"

    def __init__(self, model: nn.Module, prefix: str, vit: nn.Module):
        super().__init__(model, prefix, vit)
        self.geometry = self._read_geometry(vit)

    @staticmethod
    def _read_geometry(vit: nn.Module) -> TokenGeometry:
        rearrange = vit.to_patch_embedding[0]
        lengths = getattr(rearrange, "axes_lengths", None) or {}
        try:
            patch = (int(lengths["pf"]), int(lengths["p1"]), int(lengths["p2"]))
        except KeyError as err:
            raise ModelError(
                "the ViT's patch embedding does not say its patch size (expected an einops "
                f"Rearrange with pf, p1 and p2; found {rearrange!r})"
            ) from err
        linear = next(m for m in vit.to_patch_embedding.modules() if isinstance(m, nn.Linear))
        voxels = patch[0] * patch[1] * patch[2]
        num_prefix = int(vit.cls_token.shape[1])
        shape = getattr(vit, "g3dvit_input_shape", None)
        return TokenGeometry(
            patch_size=patch,
            num_patches=int(vit.pos_embedding.shape[1]) - num_prefix,
            num_prefix=num_prefix,
            channels=linear.in_features // voxels,
            input_shape=tuple(int(s) for s in shape) if shape is not None else None,
        )

    @property
    def blocks(self) -> list[str]:
        return [f"{self.prefix}transformer.layers.{i}" for i in range(len(self.vit.transformer.layers))]

    @property
    def readout(self) -> str:
        return f"{self.prefix}mlp_head"

    def attention_norm(self, block: int) -> str:
        return f"{self.blocks[block]}.0.norm"

    def _attention_modules(self) -> list:
        return [getattr(attn, "attend", None) for attn, _ in self.vit.transformer.layers]  # nn.Softmax

    def _qkv_modules(self) -> list:
        return [getattr(attn, "to_qkv", None) for attn, _ in self.vit.transformer.layers]

    @property
    def heads(self) -> int:
        return int(self.vit.transformer.layers[0][0].heads)

    @property
    def normalises_raw_patches(self) -> bool:
        """vit-pytorch's 3D ViT: ``Rearrange`` to patches, then ``LayerNorm(patch_dim)``."""
        embedding = getattr(self.vit, "to_patch_embedding", None)
        if not isinstance(embedding, nn.Sequential):
            return False
        patch_dim = self.geometry.channels * math.prod(self.geometry.patch_size)
        for module in list(embedding)[:2]:
            if isinstance(module, nn.LayerNorm):
                return tuple(module.normalized_shape) == (patch_dim,)
        return False

    @property
    def mean_pooled(self) -> bool:
        return getattr(self.vit, "pool", "cls") == "mean"

    def sequence_output_module(self) -> nn.Module:
        return self.vit.transformer

    def _entry_module(self) -> tuple[nn.Module, bool]:
        # the embedding dropout's output: both the stock forward and the CLS fast path call it
        return self.vit.dropout, True

    # -- the CLS fast path ------------------------------------------------------------------

    def _stock_modules(self) -> bool:
        """True when every module on the fast path runs vit-pytorch's own forward."""
        vit = self.vit
        blocks = vit.transformer.layers
        return (
            _defined_in_vit3d(vit)
            and _defined_in_vit3d(vit.transformer)
            and all(_defined_in_vit3d(attn) and _defined_in_vit3d(ff) for attn, ff in blocks)
            and vit.pool == "cls"
        )

    def supports_cls_fast_path(self, hooked: list[nn.Module]) -> bool:
        """Whether the score can be computed with the last block reduced to the CLS query.

        With a CLS readout only the CLS row of the last block reaches the score, so the last
        block needs keys and values for all tokens but queries, output projection and MLP for
        the CLS token alone. This holds only while every hooked layer runs before that point.
        """
        if not self._stock_modules():
            return False
        blocks = self.vit.transformer.layers
        allowed = {id(m) for m in self.vit.to_patch_embedding.modules()}
        allowed.add(id(self.vit.dropout))
        for block in list(blocks)[:-1]:
            allowed.update(id(m) for m in block.modules())
        allowed.add(id(blocks[-1][0].norm))
        return all(id(m) in allowed for m in hooked)

    @contextmanager
    def cls_fast_path(self) -> Iterator[None]:
        """Route the ViT's forward through the CLS-reduced last block while inside."""
        vit = self.vit
        had_own = "forward" in vit.__dict__
        previous = vit.__dict__.get("forward")
        vit.forward = lambda video: _cls_readout_forward(vit, video)
        try:
            yield
        finally:
            if had_own:
                vit.forward = previous
            else:
                del vit.forward


def _cls_query_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """vit-pytorch Attention for the first (CLS) query only.

    x: [B, T, dim] tokens entering the block -> [B, 1, dim], equal to ``attn(x)[:, :1]``.
    ``attn.norm`` is called as a module, so hooks on it see all T tokens.
    """
    normed = attn.norm(x)
    weight, bias = attn.to_qkv.weight, attn.to_qkv.bias
    inner = weight.shape[0] // 3
    q = F.linear(normed[:, :1], weight[:inner], None if bias is None else bias[:inner])
    kv = F.linear(normed, weight[inner:], None if bias is None else bias[inner:])
    k, v = kv.chunk(2, dim=-1)
    q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
    dots = torch.matmul(q, k.transpose(-1, -2)) * attn.scale  # [B, heads, 1, T]
    probs = attn.dropout(attn.attend(dots))
    out = torch.matmul(probs, v).transpose(1, 2).flatten(2)  # [B, 1, inner]
    return attn.to_out(out)


def _cls_readout_forward(vit: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """The ViT's forward with the last block computed only as far as the CLS score needs.

    video: [B, C, frames, H, W] -> logits [B, num_classes], equal to vit-pytorch's forward.
    """
    x = vit.to_patch_embedding(video)
    b, n, _ = x.shape
    x = torch.cat((vit.cls_token.expand(b, -1, -1), x), dim=1)
    x = x + vit.pos_embedding[:, : n + 1]
    x = vit.dropout(x)
    *early, (last_attn, last_ff) = vit.transformer.layers
    for attn, ff in early:
        x = attn(x) + x
        x = ff(x) + x
    cls = _cls_query_attention(last_attn, x) + x[:, :1]
    cls = last_ff(cls) + cls
    return vit.mlp_head(vit.to_latent(cls[:, 0]))
