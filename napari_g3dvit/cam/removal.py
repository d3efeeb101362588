"""Removing tokens from a ViT's input without painting anything over them.

Painting a baseline over a patch's voxels shows the model edges and blank patches it never saw
in training (the "missingness bias" of Jain et al., ICLR 2022). A ViT can instead leave the
token out of its sequence: the patch embedding and position embedding are computed as usual, and
only the kept patch tokens (with the CLS token) enter the transformer. Nothing is invented, and
a shorter sequence is cheaper. Occlusion (``baseline="drop"``) and ``auto``'s deletion and
insertion curves use this.

Every row of one call keeps the same number of patch tokens, so the rows stack into one batch;
callers group their jobs by that number (``grouped_by_size``).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

Tensor = torch.Tensor

#: the removal that leaves tokens out of the sequence (a ``baseline`` choice)
DROP = "drop"


def kept_tokens(removed: Tensor, num_tokens: int) -> Tensor:
    """Patch-token indices left after removing ``removed`` [n, k] (distinct per row, -1 = none):
    [n, m] ascending, m the same for every row (checked)."""
    n = removed.shape[0]
    keep = torch.ones(n, num_tokens + 1, dtype=torch.bool, device=removed.device)
    keep.scatter_(1, torch.where(removed < 0, num_tokens, removed), False)
    keep = keep[:, :num_tokens]
    counts = keep.sum(dim=1)
    if n and bool((counts != counts[0]).any()):
        raise ValueError("every row of one call must keep the same number of tokens; group the jobs by size")
    return keep.nonzero()[:, 1].reshape(n, -1)


def subset_logits(adapter, inputs: Tensor, owners: Tensor, keep: Tensor, batch_size: int,
                  on_call: Callable[[int], None] | None = None) -> Tensor:
    """Class scores [n, K] of ``inputs[owners[j]]`` with only the patch tokens ``keep[j]`` in the
    transformer's sequence (CLS and other prefix tokens always stay).

    inputs: [B, C, F, H, W] model inputs; owners: [n] input indices; keep: [n, m] patch-token
    indices (the same m for every row). No gradients. ``on_call(rows)`` after each model call.
    """
    prefix = adapter.geometry.num_prefix
    out = []
    with torch.no_grad():
        for start in range(0, owners.shape[0], batch_size):
            rows = keep[start : start + batch_size]

            def edit(tokens: Tensor, rows: Tensor = rows) -> Tensor:
                patches = tokens[:, prefix:]
                index = rows.to(tokens.device)[:, :, None].expand(-1, -1, tokens.shape[-1])
                return torch.cat([tokens[:, :prefix], patches.gather(1, index)], dim=1)

            handle = adapter.token_entry_hook(edit)
            try:
                out.append(adapter.forward(inputs[owners[start : start + batch_size]]))
            finally:
                handle.remove()
            if on_call is not None:
                on_call(int(rows.shape[0]))
    if not out:
        return torch.zeros(0, 0, device=inputs.device)
    return torch.cat(out)


def grouped_by_size(regions: Tensor) -> Iterator[Tensor]:
    """Row indices of ``regions`` [J, M] (-1 padded) grouped by their count of real entries."""
    sizes = (regions >= 0).sum(dim=1)
    for size in torch.unique(sizes).tolist():
        yield torch.nonzero(sizes == size)[:, 0]
