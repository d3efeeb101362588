"""How faithful a token map is to the model, measured on the volume itself (no ground truth).

``auto``'s criterion is the *relevance gain* (the symmetric relevance gain of Bluecher et al.
2024, "Decoupling pixel flipping and occlusion strategy for consistent XAI benchmarks"): rank
the tokens by the map, then

- deletion (most relevant first): remove the top k tokens, for k = 1, 4, 16, ... (token
  granularity from one token up, each count four times the last, to a quarter of the tokens),
  and record p(target);
- insertion: keep only the top k tokens (all others removed), and record p(target);

gain = mean over k of p_insertion(k) - mean over k of p_deletion(k). A map that points at what
the model uses keeps the probability when its top tokens are all that is left and loses it when
they are gone, so its gain is high; a map that points elsewhere does the opposite. Unlike a
deletion curve alone, the gain does not saturate when many maps delete the same few decisive
tokens, and it rewards finding the evidence, not only removing it.

Removal is fixed before maps are compared (Bluecher et al. show that it must be): by default
``drop``, the token left out of the transformer's sequence (``removal.py``), which creates no
edges or blank patches for the model to react to; a painted baseline can be chosen instead.
Every candidate is judged by the same removals on the same volume, and the numbers are kept in
the result for the user to see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .perturbation import baseline_inputs, occluded_inputs
from .removal import DROP, subset_logits
from .result import batched_logits, target_probability

CRITERION = ("relevance gain: mean p(target) with only the map's top k tokens kept minus mean p(target) with "
             "them removed, k = 1, 4, 16, ... up to a quarter of the tokens")


def token_counts(num_tokens: int, largest_fraction: float = 0.25, step: int = 4) -> list[int]:
    """1, 4, 16, ... (each ``step`` times the last) up to ``largest_fraction`` of the tokens."""
    top = max(1, int(largest_fraction * num_tokens))
    counts = [1]
    while counts[-1] * step <= top:
        counts.append(counts[-1] * step)
    return counts


@dataclass
class Curves:
    """p(target) after deleting ([B, S]) and after keeping only ([B, S]) each count's top tokens."""

    counts: list[int]
    deletion: torch.Tensor  # nan where a count was not measured (a candidate out after round one)
    insertion: torch.Tensor
    original: torch.Tensor  # [B] p(target) of the untouched inputs

    @property
    def complete(self) -> bool:
        return not bool(torch.isnan(self.deletion).any())

    @property
    def gain(self) -> torch.Tensor:
        """[B] insertion mean minus deletion mean over the measured counts (higher = more faithful)."""
        return self.insertion.mean(dim=1) - self.deletion.nanmean(dim=1)


def _probabilities(adapter, inputs: torch.Tensor, owners: torch.Tensor, keep: torch.Tensor,
                   targets: torch.Tensor, removal: str, base: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """p(target) of ``inputs[owners]`` keeping only the patch tokens ``keep`` [n, m] -> [n]."""
    if removal == DROP:
        logits = subset_logits(adapter, inputs, owners, keep, batch_size)
    else:
        num = adapter.geometry.num_patches
        kept = torch.zeros(keep.shape[0], num, dtype=torch.bool, device=keep.device)
        kept.scatter_(1, keep, True)
        removed = torch.where(kept, -1, torch.arange(num, device=keep.device))
        logits = torch.cat([
            batched_logits(adapter, occluded_inputs(inputs, base, owners[s : s + batch_size],
                                                    removed[s : s + batch_size], adapter.geometry.patch_size),
                           batch_size)
            for s in range(0, owners.shape[0], batch_size)])
    return target_probability(logits.float(), targets[owners]).cpu()


def relevance_curves(adapter, inputs: torch.Tensor, token_maps: dict, targets: torch.Tensor,
                     removal: str = DROP, counts: Sequence[int] | None = None,
                     batch_size: int = 16, finalists: int | None = None) -> dict:
    """Deletion and insertion curves of each candidate map on each input.

    inputs: [B, C, F, H, W] model inputs (model prepared, on their device); token_maps:
    {key: [B, N] scores, higher = more relevant}; targets: [B]. Returns {key: Curves}.
    Rows of equal length share model calls across candidates.

    finalists: None measures every curve in full. A number runs two rounds, since deletions
    (sequences of almost every token) cost most: round one measures every candidate's insertions
    and its deletion at the largest count; only the ``finalists`` best by insertion mean minus
    that deletion get the deletions at the other counts (``Curves.complete``).
    """
    num = adapter.geometry.num_patches
    counts = list(counts or token_counts(num))
    device = inputs.device
    batch = inputs.shape[0]
    base = None if removal == DROP else baseline_inputs(inputs, removal, adapter.geometry.patch_size)
    original = target_probability(batched_logits(adapter, inputs, batch_size).float(), targets).cpu()
    keys = list(token_maps)
    ranks = {key: torch.argsort(torch.as_tensor(token_maps[key]).float().to(device), dim=1, descending=True,
                                stable=True) for key in keys}
    results = {key: Curves(counts, torch.full((batch, len(counts)), float("nan")), torch.zeros(batch, len(counts)),
                           original) for key in keys}

    def measure(which: list, step: int, kind: str) -> None:
        """p(target) for the candidates ``which`` at ``counts[step]``, all in shared calls."""
        k = counts[step]
        owners = torch.arange(batch, device=device).repeat(len(which))
        stacked = torch.cat([ranks[key] for key in which])  # [len(which) * B, N]
        keep = stacked[:, :k] if kind == "insertion" else stacked[:, k:]
        found = _probabilities(adapter, inputs, owners, keep.sort(dim=1).values, targets, removal, base, batch_size)
        for i, key in enumerate(which):
            getattr(results[key], kind)[:, step] = found[i * batch : (i + 1) * batch]

    last = len(counts) - 1
    for step in range(len(counts)):
        measure(keys, step, "insertion")
    measure(keys, last, "deletion")
    ahead = keys
    if finalists is not None and finalists < len(keys):
        first_round = {key: float((results[key].insertion.mean(dim=1) - results[key].deletion[:, last]).mean())
                       for key in keys}
        ahead = sorted(keys, key=lambda key: -first_round[key])[:finalists]
    for step in range(last):
        measure(ahead, step, "deletion")
    return results
