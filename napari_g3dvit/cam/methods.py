"""The CAM methods: small pure functions from one pass's tensors to one score per token.

Every function takes the hooked layer's activations ``A`` and the gradients ``G`` of the target
score with respect to them, both ``[B, T, C]`` with the patch tokens last (any prefix tokens,
such as CLS, first), and returns raw token scores ``[B, N]`` for the N patch tokens, before the
shared ReLU, normalisation and threshold of ``postprocess.py``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..options import POOLINGS
from ..registry import CAM_METHODS

Tensor = torch.Tensor


def _patches(t: Tensor, num_patches: int) -> Tensor:
    """[B, T, C] -> [B, N, C], dropping prefix tokens."""
    return t[:, t.shape[1] - num_patches :]


def pool_gradients(grads: Tensor, pooling: str) -> Tensor:
    """One weight per token from its gradient over the feature axis: [B, T, C] -> [B, T]."""
    if pooling == "mean":
        return grads.mean(dim=-1)
    if pooling == "max":
        return grads.amax(dim=-1)
    if pooling == "absmean":
        return grads.abs().mean(dim=-1)
    if pooling == "relu":
        return grads.clamp(min=0).mean(dim=-1)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


#: A channel sum smaller than this fraction of the summed magnitudes is rounding noise.
CANCELLATION_RTOL = 1e-4


def _without_cancellation(total: Tensor, magnitude: Tensor) -> Tensor:
    """Zero the sums that cancel down to float noise: both [B, T]."""
    return torch.where(total.abs() <= CANCELLATION_RTOL * magnitude, torch.zeros_like(total), total)


def g3dvit(acts: Tensor, grads: Tensor, num_patches: int, pooling: str = "mean") -> Tensor:
    """G3D-ViT, token-weighted: score[t] = pool_C(G[t]) * sum_C A[t].

    From G3D-ViT (T. Gillet, github.com/gillet-thomas/G3D-ViT), a 3D GradCAM for the ViT of
    fMRI2Vec.

    Both factors can cancel exactly: sum_C A is 0 for a LayerNorm output whose affine is the
    identity, and mean_C G is 0 at residual-stream layers, because every path from there to the
    score passes through a LayerNorm. Computed in float64, such cancellations give 0 rather
    than rounding noise that normalisation would blow up into a fake map.
    """
    acts, grads = acts.double(), grads.double()
    weights = pool_gradients(grads, pooling)
    if pooling == "mean":
        weights = _without_cancellation(weights, grads.abs().mean(dim=-1))
    sums = _without_cancellation(acts.sum(dim=-1), acts.abs().sum(dim=-1))
    return (weights * sums)[:, -num_patches:]


def gradcam(acts: Tensor, grads: Tensor, num_patches: int, pooling: str = "mean") -> Tensor:
    """Classic channel-weighted GradCAM: alpha[C] = mean over patch tokens of G; score = sum_C alpha A.

    Selvaraju et al., "Grad-CAM: Visual explanations from deep networks via gradient-based
    localization", ICCV 2017; here with tokens in place of a CNN's spatial positions.
    """
    a, g = _patches(acts, num_patches), _patches(grads, num_patches)
    alpha = g.mean(dim=1, keepdim=True)  # [B, 1, C]
    return (alpha * a).sum(dim=-1)


def layercam(acts: Tensor, grads: Tensor, num_patches: int, pooling: str = "mean") -> Tensor:
    """LayerCAM: score = sum_C ReLU(G) * A.

    Jiang et al., "LayerCAM: Exploring hierarchical class activation maps for localization",
    IEEE Transactions on Image Processing 2021.
    """
    a, g = _patches(acts, num_patches), _patches(grads, num_patches)
    return (g.clamp(min=0) * a).sum(dim=-1)


def gradcam_elementwise(acts: Tensor, grads: Tensor, num_patches: int, pooling: str = "mean") -> Tensor:
    """GradCAM-ElementWise: score = sum_C ReLU(G * A).

    The element-wise variant introduced in the pytorch-grad-cam library (J. Gildenblat and
    contributors, github.com/jacobgil/pytorch-grad-cam).
    """
    a, g = _patches(acts, num_patches), _patches(grads, num_patches)
    return (g * a).clamp(min=0).sum(dim=-1)


def hirescam(acts: Tensor, grads: Tensor, num_patches: int, pooling: str = "mean") -> Tensor:
    """HiResCAM: score = sum_C G * A.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891, 2020.
    """
    a, g = _patches(acts, num_patches), _patches(grads, num_patches)
    return (g * a).sum(dim=-1)


TOKEN_SCORES: dict[str, Callable[..., Tensor]] = {
    "g3dvit": g3dvit,
    "gradcam": gradcam,
    "layercam": layercam,
    "gradcam-elementwise": gradcam_elementwise,
    "hirescam": hirescam,
}
assert tuple(TOKEN_SCORES) == CAM_METHODS, "options.CAM_METHODS and the method registry disagree"


def gradient_pass(batch, methods: list[str]) -> list:
    """The pass the CAM and the attention methods share (``explaining.PassInput`` in): one
    forward and one backward serve every CAM method at every hooked layer and every attention
    method; the backward reaches the attention maps only when a gradient method asks for them."""
    from ..explaining import MapPart
    from ..registry import ATTENTION_METHODS, METHOD_LAYERS
    from .attention import GRADIENT_METHODS, method_scores
    from .engine import run_capture

    cam = [m for m in methods if m in TOKEN_SCORES]
    attention = [m for m in methods if m in ATTENTION_METHODS]
    layers = batch.layers if cam else {}
    capture = run_capture(batch.adapter, batch.inputs, layers, batch.targets, attention=bool(attention),
                          attention_grads=any(m in GRADIENT_METHODS for m in attention))
    num = batch.adapter.geometry.num_patches
    parts = [MapPart(m, name, TOKEN_SCORES[m](capture.activations[name], capture.gradients[name], num,
                                              batch.settings.pooling), capture.logits, capture.targets)
             for m in cam for name in layers]
    if attention:
        found = method_scores(batch.adapter, capture.attention, capture.attention_grads, attention)
        parts += [MapPart(m, METHOD_LAYERS[m], found[m], capture.logits, capture.targets) for m in attention]
    return parts
