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


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[B, K] logits -> probabilities: softmax, or the sigmoid for a single logit ([B, 1])."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def target_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """p(target) per input: logits [B, K], targets [B] -> [B]; with a single logit, class 1 is its
    sigmoid and class 0 the complement."""
    probs = class_probabilities(logits)
    index = targets.to(probs.device)
    if probs.shape[1] == 1:
        return torch.where(index == 1, probs[:, 0], 1 - probs[:, 0])
    return probs.gather(1, index[:, None])[:, 0]
