"""What every method family hands back to ``explain``."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MethodResult:
    """scores: [B, N] raw patch-token scores (or, for voxel methods, [B, F, H, W] attributions);
    logits: [B, K] of the unperturbed inputs (detached); targets: [B] the classes explained."""

    scores: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
