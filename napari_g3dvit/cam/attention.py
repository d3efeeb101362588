"""Attention-based token scores for 3D ViTs: attention rollout, gradient-weighted rollout, LeGrad.

All requested methods share one forward pass of the whole model (and, when a gradient method is
asked for, one ``torch.autograd.grad`` call). During that pass every block's attention
probabilities ``A_l`` ``[B, heads, T, T]`` (rows = queries, columns = keys, T = prefix + patch
tokens) are captured with forward hooks:

* vit-pytorch ``vit_3d.ViT``: ``Attention.attend`` is an ``nn.Softmax`` module; its output is A.
* MONAI ``ViT``: ``SABlock`` computes its softmax inline, then passes the probabilities through
  its ``drop_weights`` dropout module. In eval mode that dropout returns its input tensor
  unchanged (the same object), so a forward hook on ``drop_weights`` sees exactly the tensor
  MONAI computed, and MONAI's own forward runs untouched: nothing is re-implemented, so nothing
  can drift from MONAI's math. A block built with ``use_flash_attention=True`` never materialises
  A; for the pass its flag is switched to MONAI's explicit branch (mathematically the same
  attention) and put back afterwards.

Gradients: the caller has frozen the parameters, so nothing in the forward requires grad. The
first block's captured probabilities are swapped for a leaf copy that requires grad (same values,
the model computes on from it); every later A_l is then an ordinary node of the graph, and one
``autograd.grad`` of the target logit gives d score / d A_l for all blocks at once, with no
parameter gradients. Nothing upstream of the first attention map needs a gradient (it cannot
affect d score / d A_l), so cutting the graph there is exact.

Every hook is removed and every flag restored in ``finally``, also when the forward raises.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError, SettingsError
from ..registry import ATTENTION_METHODS
from .result import MethodResult

Tensor = torch.Tensor

GRADIENT_METHODS = frozenset({"grad-rollout", "legrad"})


class AttentionResult(MethodResult):
    """One attention-based method's output for a batch: ``scores`` [B, N] raw patch-token scores
    (before ReLU, min-max and threshold), ``logits`` [B, K], ``targets`` [B]."""


class AttentionRecorder:
    """Forward hooks that keep each block's attention probabilities, in block order."""

    def __init__(self, modules: list[nn.Module], expected: tuple[int, int], make_leaf: bool):
        self.maps: list[Tensor | None] = [None] * len(modules)
        self._expected = expected  # (batch, tokens)
        self._make_leaf = make_leaf
        self._handles = []
        try:
            for index, module in enumerate(modules):
                self._handles.append(module.register_forward_hook(self._hook(index)))
        except BaseException:
            self.remove()
            raise

    def _hook(self, index: int):
        def hook(_module, _inputs, output):
            batch, tokens = self._expected
            if not torch.is_tensor(output) or output.ndim != 4 or output.shape[0] != batch \
                    or output.shape[2] != tokens or output.shape[3] != tokens:
                found = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
                raise ModelError(
                    f"block {index}'s attention probabilities are {found}, not "
                    f"[{batch}, heads, {tokens}, {tokens}] as this model's tokens imply"
                )
            if self.maps[index] is not None:
                raise ModelError(f"block {index}'s attention ran more than once in one forward pass")
            if self._make_leaf and not output.requires_grad:
                # The graph starts here: same values, and everything after depends on this leaf.
                output = output.detach().requires_grad_(True)
            self.maps[index] = output
            return output

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


# -- the methods (pure functions of the captured maps) -----------------------------------------

def _readout_weights(adapter, tokens: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[T] weights of the output tokens that the classifier reads.

    A CLS readout reads token 0; vit-pytorch's ``pool='mean'`` averages all T tokens (its CLS
    token included), and a model without prefix tokens can only be pooled over all tokens.
    """
    mean_pool = adapter.geometry.num_prefix == 0 or adapter.mean_pooled
    if mean_pool:
        return torch.full((tokens,), 1.0 / tokens, dtype=dtype, device=device)
    weights = torch.zeros(tokens, dtype=dtype, device=device)
    weights[0] = 1.0
    return weights


def attention_rollout(maps: list[Tensor], readout: Tensor, num_patches: int) -> Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").

    Attention alone says how much each token mixes in from the others within one block; rollout
    follows that mixing through the whole depth. Per block the heads are averaged, the identity
    is added to stand for the residual connection and the rows are renormalised to sum to 1;
    the per-block matrices are chained in the order the tokens flow, R = Â_L ... Â_2 Â_1. The
    readout row(s) of R (the CLS row, or the mean of all rows for mean pooling) over the patch
    columns are the scores. Uses no gradient and no class: every target gets the same map.

    maps: L tensors [B, heads, T, T]; readout: [T] -> [B, N].
    """
    batch, _, tokens, _ = maps[0].shape
    eye = torch.eye(tokens, dtype=torch.float64, device=maps[0].device)
    rollout = eye.expand(batch, tokens, tokens)
    for probs in maps:
        mixed = probs.double().mean(dim=1) + eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed @ rollout
    return (readout @ rollout)[:, tokens - num_patches:]


def gradient_rollout(maps: list[Tensor], grads: list[Tensor], readout: Tensor, num_patches: int) -> Tensor:
    """Gradient-weighted rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
    Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"), the rule that
    weighs attention by its gradient, without relevance propagation (LRP).

    Each block's attention is weighted element-wise by the target score's gradient with respect
    to it; only positive products count, and the heads are averaged:
    Ā_l = mean_heads ReLU(dA_l ⊙ A_l). Starting from R = I, every block in order updates
    R ← R + Ā_l R (the identity carries the residual path). The readout row(s) of R over the
    patch columns are the scores (the CLS row; the mean of the rows for mean pooling).

    maps, grads: L tensors [B, heads, T, T]; readout: [T] -> [B, N].
    """
    batch, _, tokens, _ = maps[0].shape
    eye = torch.eye(tokens, dtype=torch.float64, device=maps[0].device)
    relevance = eye.expand(batch, tokens, tokens)
    for probs, grad in zip(maps, grads):
        weighted = (grad.double() * probs.double()).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return (readout @ relevance)[:, tokens - num_patches:]


def legrad(grads: list[Tensor], num_patches: int) -> Tensor:
    """LeGrad (Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, 2024, "LeGrad: An Explainability
    Method for Vision Transformers via Feature Formation Sensitivity"), single-backward variant.

    Per block: the gradient of the target score with respect to that block's attention map,
    clipped at zero (ReLU of the gradient alone, not of gradient times attention), averaged over
    heads and over all query rows (the CLS row included); the key columns of the patch tokens
    are that block's scores, and the blocks' scores are summed (every block, from the first).

    Variant, exactly: the score differentiated is the model's final target logit for every
    block, so one ``autograd.grad`` serves all blocks and any head after the ViT is included.
    The published method instead reads a score out of each block's own output through the
    model's final norm and head and differentiates that per block (one gradient per layer);
    here d score / d A_l also carries A_l's effect through the later blocks. The mean over all
    query rows is the published rule; it also keeps every row's signal where the readout pools
    all tokens, and where the readout is CLS-only the last block's gradient lies in the CLS row
    alone, which the mean keeps (scaled by 1/T, the same for every token).

    grads: L tensors [B, heads, T, T] -> [B, N].
    """
    tokens = grads[0].shape[-1]
    total = None
    for grad in grads:
        per_key = grad.double().clamp(min=0).mean(dim=(1, 2))  # [B, T]
        total = per_key if total is None else total + per_key
    return total[:, tokens - num_patches:]


# -- the pass -------------------------------------------------------------------------------

def _requested(methods: Sequence[str]) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    chosen = list(dict.fromkeys(methods))
    if not chosen:
        raise SettingsError(f"no attention method requested; choose from {', '.join(ATTENTION_METHODS)}")
    unknown = [m for m in chosen if m not in ATTENTION_METHODS]
    if unknown:
        raise SettingsError(f"unknown attention method {unknown[0]!r}; choose from {', '.join(ATTENTION_METHODS)}")
    return chosen


def attention_scores(
    adapter,
    inputs: Tensor,
    methods: Sequence[str],
    targets: Tensor | None,
) -> dict[str, AttentionResult]:
    """Raw patch-token scores of each requested attention-based method, from one pass.

    adapter: ``napari_g3dvit.models.find_adapter(model)``; the model must already be prepared
             (``prepared_model``: eval mode, frozen parameters, on the inputs' device).
    inputs:  [B, C, frames, H, W] on the model's device.
    methods: names from ``ATTENTION_METHODS``.
    targets: [B] class per input, or None for each input's predicted class.

    One forward of ``adapter.model``; when a gradient method is asked for, also one
    ``autograd.grad`` from the summed target logits to the attention maps. Returns
    ``{method: AttentionResult}`` in the order asked.
    """
    from .engine import run_capture

    chosen = _requested(methods)
    needs_grad = any(m in GRADIENT_METHODS for m in chosen)
    capture = run_capture(adapter, inputs, {}, targets, attention=True, attention_grads=needs_grad)
    maps, grads, logits, targets = capture.attention, capture.attention_grads, capture.logits, capture.targets
    logits, targets = logits.detach(), targets.detach()
    return {method: AttentionResult(scores=scores, logits=logits, targets=targets)
            for method, scores in method_scores(adapter, maps, grads, chosen).items()}


def method_scores(adapter, maps: list[Tensor], grads: list[Tensor] | None, methods: Sequence[str]) -> dict:
    """Raw patch-token scores [B, N] of each attention method from every block's attention
    probabilities ``maps`` (and their gradients ``grads``), each [B, heads, T, T]."""
    maps = [m.detach() for m in maps]
    tokens, num_patches = maps[0].shape[-1], adapter.geometry.num_patches
    readout = _readout_weights(adapter, tokens, torch.float64, maps[0].device)
    found = {}
    for method in methods:
        if method == "attention-rollout":
            found[method] = attention_rollout(maps, readout, num_patches)
        elif method == "grad-rollout":
            found[method] = gradient_rollout(maps, grads, readout, num_patches)
        else:
            found[method] = legrad(grads, num_patches)
    return found
