"""How faithful a token map is to the model, measured on the volume itself (no ground truth).

The criterion used by ``method="auto"`` is the *MoRF drop* (most relevant first, i.e. deletion at
token granularity): replace the voxels of a map's hottest tokens by the volume's mean (in the
model's input space, after its preprocessing) and measure how far the target class probability
falls; averaged over deleting the top 5, 10 and 20 % of tokens. A map that points at what the
model uses makes the probability fall most. Deleting tokens can also create evidence (new
edges) or leave the training distribution, so every candidate is judged by the same deletions
on the same volume, and the numbers are kept in the result for the user to see.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .postprocess import tokens_to_voxels
from .result import target_probability

#: fractions of tokens deleted (hottest first) for the MoRF drop
DELETION_FRACTIONS = (0.05, 0.10, 0.20)
CRITERION = ("MoRF drop: mean fall of the target probability when the map's top 5/10/20 % tokens "
             "are replaced by the volume's mean (model input space)")


def _target_probability(adapter, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
    """p(target) for each input: inputs [M, C, F, H, W], targets [M] -> [M]."""
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            logits = adapter.logits(adapter.model(inputs[start : start + batch_size]))
            if logits.ndim == 1:
                logits = logits[:, None]
            out.append(target_probability(logits.float(), targets[start : start + batch_size]).cpu())
    return torch.cat(out)


def morf_drop(adapter, inputs: torch.Tensor, token_maps: dict, targets: torch.Tensor,
              fractions: Sequence[float] = DELETION_FRACTIONS, batch_size: int = 16) -> dict:
    """The MoRF drop of each candidate map on each input.

    inputs: [B, C, F, H, W] model inputs; token_maps: {key: [B, N] raw or normalised scores};
    targets: [B]. Returns {key: [B] mean probability drop} (higher = more faithful).
    """
    geometry = adapter.geometry
    grid = geometry.grid_for(tuple(inputs.shape[2:]))
    num = geometry.num_patches
    base = inputs.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(inputs)
    keys = list(token_maps)
    batch = len(inputs)
    perturbed, owners = [], []
    for k, key in enumerate(keys):
        ranks = torch.argsort(token_maps[key].float().to(inputs.device), dim=1, descending=True)
        for fraction in fractions:
            count = max(1, int(round(fraction * num)))
            mask = torch.zeros(batch, num, device=inputs.device)
            mask.scatter_(1, ranks[:, :count], 1.0)
            voxels = tokens_to_voxels(mask.reshape(batch, *grid), geometry.patch_size, "nearest")[:, None]
            perturbed.append(torch.where(voxels > 0, base, inputs))
            owners.append(k)
    original = _target_probability(adapter, inputs, targets, batch_size)
    stacked = torch.cat(perturbed)
    repeated_targets = targets.repeat(len(perturbed))
    after = _target_probability(adapter, stacked, repeated_targets.to(inputs.device), batch_size)
    after = after.reshape(len(perturbed), batch)
    drops = {key: torch.zeros(batch) for key in keys}
    for row, k in enumerate(owners):
        drops[keys[k]] += (original - after[row]) / len(fractions)
    return drops
