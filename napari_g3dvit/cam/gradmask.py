"""GradMask in 3D: binary token masks from the gradients of every block's queries, keys and values.

Traini et al. (IJCNN 2025) explain a ViT by turning gradients into masks and asking the model
about the masked inputs. Here, for vit-pytorch's ``ViT`` 3D and MONAI's ``ViT``:

1. One forward and one backward to the fused Q/K/V projection of every block (``to_qkv`` in
   vit-pytorch, ``qkv`` in MONAI): ``G`` = d target logit / d [Q | K | V], each [B, T, inner].
2. For each block but the last (with a CLS readout only the CLS query of the last block reaches
   the score, so its patch gradients say little), each of Q, K, V, and each channel group
   (``masks_per_layer`` groups; default one per head): sum the group's gradient over its
   channels per token, clip negatives, drop the prefix tokens, and keep the tokens above that
   map's own mean: a binary token mask.
3. Every mask is upsampled (each token fills its patch) and applied to the input, voxels outside
   the mask set to the baseline; the masked inputs are scored in batches.
4. The map is the sum of the masks, each weighted by the target's probability on its masked
   input.

Cost: one forward and one backward, then 3 x (blocks - 1) x masks_per_layer masked forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ModelError, SettingsError
from .perturbation import baseline_inputs
from .postprocess import tokens_to_voxels
from .result import MethodResult, resolve_targets, target_logits, target_probability

Tensor = torch.Tensor


@dataclass
class GradMaskResult(MethodResult):
    """``scores`` [B, N] (raw, >= 0), ``logits`` [B, K] of the unmasked inputs, ``targets`` [B],
    and the number of masks scored per input."""

    masks: int = 0


def gradmask_scores(adapter, inputs: Tensor, targets: Tensor | None, baseline: str = "mean",
                    masks_per_layer: int | None = None, batch_size: int = 16) -> GradMaskResult:
    """GradMask token scores; the model must already be prepared (eval, frozen parameters).

    inputs: [B, C, F, H, W]; targets: [B] or None (each input's predicted class).
    """
    geometry = adapter.geometry
    groups = masks_per_layer or adapter.heads
    if not isinstance(groups, int) or groups < 1:
        raise SettingsError(f"masks_per_layer must be a positive whole number, got {masks_per_layer!r}")
    modules = adapter.qkv_modules()
    outputs: list[Tensor | None] = [None] * len(modules)

    def keep(index: int):
        def hook(_module, _inputs, output):
            outputs[index] = output
        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        with torch.enable_grad():
            start = inputs.detach().clone().requires_grad_(True)  # the graph reaches every block
            logits = adapter.logits(adapter.model(start))
            if logits.ndim == 1:
                logits = logits[:, None]
            targets = resolve_targets(logits.detach(), targets)
            score = target_logits(logits, targets).sum()
            grads = torch.autograd.grad(score, outputs, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    num = geometry.num_patches
    masks = []
    for grad in grads[:-1]:  # every block but the last
        if grad is None:
            continue
        batch, tokens, width = grad.shape
        inner = width // 3
        if inner % groups:
            raise SettingsError(f"masks_per_layer={groups} does not divide the {inner} Q/K/V channels")
        for part in grad.reshape(batch, tokens, 3, inner).unbind(dim=2):  # Q, K, V
            per_token = part.reshape(batch, tokens, groups, inner // groups).sum(dim=-1).clamp(min=0)
            per_token = per_token[:, tokens - num :]  # [B, N, groups]
            masks.append(per_token > per_token.mean(dim=1, keepdim=True))
    if not masks:
        raise ModelError("no block before the last has Q/K/V gradients, so GradMask has no masks")
    stack = torch.cat(masks, dim=2).permute(0, 2, 1).float()  # [B, M, N]
    count = stack.shape[1]
    grid = geometry.grid_for(tuple(inputs.shape[2:]))
    base = baseline_inputs(inputs, baseline, geometry.patch_size)
    weights = torch.empty(inputs.shape[0], count, device=inputs.device)
    with torch.no_grad():
        for b in range(inputs.shape[0]):
            for first in range(0, count, batch_size):
                chunk = stack[b, first : first + batch_size]
                voxels = tokens_to_voxels(chunk.reshape(len(chunk), *grid), geometry.patch_size, "nearest")[:, None]
                masked = torch.where(voxels > 0, inputs[b : b + 1], base[b : b + 1])
                logits_masked = adapter.logits(adapter.model(masked)).float()
                weights[b, first : first + len(chunk)] = target_probability(
                    logits_masked, targets[b : b + 1].expand(len(chunk)))
    scores = (weights[:, :, None] * stack).sum(dim=1)
    return GradMaskResult(scores=scores, logits=logits.detach(), targets=targets.detach(), masks=count)


def gradmask_pass(batch, methods: list[str]) -> list:
    """GradMask's pass (``explaining.PassInput`` in; ``settings.baseline`` already resolved)."""
    from ..explaining import MapPart
    from ..registry import METHOD_LAYERS

    masked = gradmask_scores(batch.adapter, batch.inputs, batch.targets, baseline=batch.settings.baseline)
    return [MapPart("gradmask", METHOD_LAYERS["gradmask"], masked.scores, masked.logits, masked.targets,
                    {"forwards": masked.masks * len(batch.inputs)})]
