"""From raw token scores to the map shown: ReLU, min-max, threshold, tokens -> voxels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def normalise_tokens(scores: Tensor) -> Tensor:
    """ReLU, then min-max to [0, 1] per map: [B, N] -> [B, N]. A constant map becomes 0."""
    scores = scores.clamp(min=0)
    low = scores.amin(dim=1, keepdim=True)
    span = scores.amax(dim=1, keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (scores - low) / safe, torch.zeros_like(scores))


def keep_top_percent(maps: Tensor, percent: float | None) -> Tensor:
    """Zero every token below the (100 - percent)th percentile of its own map: [B, N] -> [B, N].

    Values at or above the percentile keep their value; ``None`` (or 100) keeps all.
    """
    if percent is None or percent >= 100:
        return maps
    cut = torch.quantile(maps.double(), 1.0 - percent / 100.0, dim=1, keepdim=True)
    return torch.where(maps.double() >= cut, maps, torch.zeros_like(maps))


def tokens_to_voxels(grid_maps: Tensor, patch_size: tuple[int, int, int], mode: str) -> Tensor:
    """Token maps [B, F, Gh, Gw] -> voxel maps [B, F*pf, Gh*ph, Gw*pw].

    ``nearest`` fills each token's patch with its value; ``trilinear`` interpolates between
    token centres (``align_corners=False``), clamped to [0, 1].
    """
    if mode == "nearest":
        out = grid_maps
        for axis, size in enumerate(patch_size, start=1):
            out = out.repeat_interleave(size, dim=axis)
        return out
    size = tuple(g * p for g, p in zip(grid_maps.shape[1:], patch_size))
    up = F.interpolate(grid_maps[:, None], size=size, mode="trilinear", align_corners=False)
    return up[:, 0].clamp_(0.0, 1.0)
