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


def resolve_targets(logits: torch.Tensor, targets) -> torch.Tensor:
    """The class each input explains: [B] int64 on the logits' device.

    logits [B, K]; targets None (each input's predicted class) or [B] class indices, checked
    to exist. Every method family resolves its targets here.
    """
    from ..errors import SettingsError

    if targets is None:
        return logits.argmax(dim=1)
    targets = torch.as_tensor(targets).to(device=logits.device, dtype=torch.int64).reshape(-1)
    if targets.numel() != logits.shape[0]:
        raise SettingsError(f"{targets.numel()} target classes were given for {logits.shape[0]} inputs; give one per input")
    classes = logits.shape[1]
    if bool((targets < 0).any()) or int(targets.max()) >= classes:
        bad = int(targets.min()) if bool((targets < 0).any()) else int(targets.max())
        raise SettingsError(f"target class {bad} does not exist: the model has {classes} classes (0 to {classes - 1})")
    return targets


def target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The score each input's target is explained by, its raw logit: [B, K], [B] -> [B]."""
    return logits.gather(1, targets.to(logits.device)[:, None])[:, 0]


def batched_logits(adapter, inputs: torch.Tensor, batch_size: int, fast: bool = True) -> torch.Tensor:
    """Class scores [M, K] of ``inputs`` [M, C, F, H, W], ``batch_size`` at a time, no gradients."""
    with torch.no_grad():
        parts = [adapter.forward(inputs[start : start + batch_size], fast=fast)
                 for start in range(0, len(inputs), batch_size)]
    return torch.cat(parts)
