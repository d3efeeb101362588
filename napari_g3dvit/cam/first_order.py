"""What removing each token would do to the score, to first order, from one forward and one backward.

Occlusion measures, for every token, how far the target logit falls when that token is removed:
one forward per token. Its first-order estimate needs one forward and one backward for all of
them:

- ``drop`` (the token left out of the sequence): every block's attention probabilities are
  multiplied by a gate per key token and renormalised, A'[q, j] = A[q, j] g[j] / sum_k A[q, k]
  g[k]. With every gate at 1 nothing changes; with g[j] = 0 in every block, no token can read
  token j, which (with a CLS readout) is exactly token j left out of the sequence. The gradient
  d logit / d g[j] at g = 1 is the first-order fall when token j is dropped. A readout that
  averages the output tokens h (vit-pytorch's ``pool="mean"``) also loses token j from the
  average: d logit / d w[j] of the weighted mean sum_i w[i] h[i] / sum_i w[i] at w = 1 is
  G[j] . (h[j] - mean(h)), G[j] being d logit / d h[j]; it is added.
- a painted baseline: the fall is approximated by the gradient of the logit with respect to the
  input, times (input - baseline), summed over the token's voxels.

``occlusion_scores(mode="fast")`` ranks every token by this estimate and then measures the
strongest ones exactly.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch

from ..errors import ModelError
from .removal import DROP
from .result import resolve_targets, target_logits

Tensor = torch.Tensor


@contextmanager
def key_gates(adapter, gate: Tensor) -> Iterator[None]:
    """While inside, every block's attention reads key token j with weight ``gate[:, j]``.

    gate: [B, N] per patch token (prefix tokens keep weight 1). A'[q, j] = A[q, j] g[j] /
    sum_k A[q, k] g[k]; a gate of 0 in every block hides the token from every other token.
    """
    batch, prefix = gate.shape[0], adapter.geometry.num_prefix
    keys = torch.cat([torch.ones(batch, prefix, device=gate.device, dtype=gate.dtype), gate], dim=1)

    def gated(_module, _args, probs: Tensor) -> Tensor:
        if probs.shape[-1] != keys.shape[1] or probs.shape[0] != batch:
            raise ModelError(f"attention probabilities {tuple(probs.shape)} do not match {batch} inputs of "
                             f"{keys.shape[1]} tokens")
        weighted = probs * keys[:, None, None, :].to(probs.dtype)
        return weighted / weighted.sum(dim=-1, keepdim=True)

    with ExitStack() as stack:
        stack.enter_context(adapter.explicit_attention())
        for module in adapter.attention_probability_modules():
            stack.callback(module.register_forward_hook(gated).remove)
        yield


def removal_estimate(adapter, inputs: Tensor, targets: Tensor | None, removal: str = DROP,
                     base: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """First-order fall of the target logit when each patch token is removed.

    inputs: [B, C, F, H, W] (model prepared, on their device); targets: [B] or None; removal:
    ``drop`` or a painted baseline whose volumes ``base`` [B, C, F, H, W] are given.
    Returns ``(estimates [B, N], logits [B, K], targets [B])``.
    """
    geometry = adapter.geometry
    with torch.enable_grad():
        if removal == DROP:
            gate = torch.ones(inputs.shape[0], geometry.num_patches, device=inputs.device, dtype=inputs.dtype,
                              requires_grad=True)
            outputs = []
            with ExitStack() as stack:
                stack.enter_context(key_gates(adapter, gate))
                if adapter.mean_pooled:
                    keep = adapter.sequence_output_module().register_forward_hook(
                        lambda _m, _a, out: outputs.append(out))
                    stack.callback(keep.remove)
                logits = adapter.forward(inputs)
            targets = resolve_targets(logits.detach(), targets)
            score = target_logits(logits, targets).sum()
            if not outputs:
                (grad,) = torch.autograd.grad(score, gate)
                return grad.detach(), logits.detach(), targets
            (grad, pooled_grad) = torch.autograd.grad(score, [gate, outputs[0]])
            tokens = outputs[0].detach()
            pooling = (pooled_grad * (tokens - tokens.mean(dim=1, keepdim=True))).sum(dim=-1)  # [B, T]
            return (grad + pooling[:, geometry.num_prefix:]).detach(), logits.detach(), targets
        from .perturbation import tokens_from_voxels

        x = inputs.detach().clone().requires_grad_(True)
        logits = adapter.forward(x)
        targets = resolve_targets(logits.detach(), targets)
        (grad,) = torch.autograd.grad(target_logits(logits, targets).sum(), x)
        change = (grad * (inputs - base)).sum(dim=1)  # [B, F, H, W]
        return tokens_from_voxels(change.detach(), geometry.patch_size), logits.detach(), targets
