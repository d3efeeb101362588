"""Conservative propagation (``cp-lrp``): relevance per token from one forward and one backward.

Ali et al. (ICML 2022, "XAI for Transformers: Better Explanations through Conservative
Propagation") showed that a transformer's plain gradient x input is not conservative: the
attention softmax and the LayerNorm's division by the standard deviation let relevance leak.
Treating both as constants in the backward pass (they are still computed in the forward), and
passing GELU's gradient as gelu(x) / x = Phi(x) (AttnLRP's identity rule, Achtibat et al.,
ICML 2024; the same rules are LibraGrad's "gradient flow rectification", Mehri et al., CVPR
2025), makes gradient x input at the token embeddings a relevance that sums approximately to
the explained logit. For one pass over the model:

- every ``nn.LayerNorm``: (x - mean(x)) / std(x).detach() * weight + bias;
- every ``nn.GELU``: x * Phi(x).detach() (the forward value is GELU's own);
- every block's attention probabilities: detached (the gradient flows through the values only);
- the target's raw logit is back-propagated to the transformer's input tokens (patch embedding
  plus position embedding, after the embedding dropout; MONAI: the first block's input);
- relevance of token i = sum over channels of (input tokens x gradient) [B, N], patch tokens only.

The relevance is signed; ``explain`` keeps its positive part like every map. Reading it at the
input of a later block (``relevance_block``) comes from the same backward. The model is changed
only while the pass runs (instance ``forward`` overrides and hooks) and comes back exactly as it
was, also when the pass raises.

LRP is patented (as lxt's documentation states: free of charge for personal and scientific
purposes); see the README.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError, SettingsError
from .result import MethodResult, resolve_targets, target_logits

Tensor = torch.Tensor


@dataclass
class RelevanceResult(MethodResult):
    """``scores`` [B, N] signed patch-token relevance at ``block``'s input; ``logits`` [B, K];
    ``targets`` [B]; ``total`` [B] the summed relevance of all tokens (CLS included), which
    conservation says is close to the explained logit."""

    block: int = 0
    total: Tensor | None = None


def _layer_norm_std_detached(module: nn.LayerNorm):
    dims = tuple(range(-len(module.normalized_shape), 0))

    def forward(x: Tensor) -> Tensor:
        centred = x - x.mean(dim=dims, keepdim=True)
        std = torch.sqrt(centred.pow(2).mean(dim=dims, keepdim=True) + module.eps).detach()
        out = centred / std
        if module.weight is not None:
            out = out * module.weight
        if module.bias is not None:
            out = out + module.bias
        return out

    return forward


def _gelu_identity_rule(module: nn.GELU):
    approximate = getattr(module, "approximate", "none")

    def forward(x: Tensor) -> Tensor:
        if approximate == "none":
            phi = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
        else:  # gelu(x) / x, with its limit 1/2 at 0
            safe = torch.where(x == 0, torch.ones_like(x), x)
            phi = torch.where(x == 0, torch.full_like(x, 0.5), F.gelu(safe, approximate=approximate) / safe)
        return x * phi.detach()

    return forward


@contextmanager
def _instance_forward(module: nn.Module, forward) -> Iterator[None]:
    """Route ``module``'s calls through ``forward`` while inside; its own forward comes back after."""
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward


@contextmanager
def conservative_rules(adapter) -> Iterator[None]:
    """While inside, ``adapter.model``'s backward follows the conservative rules (module docstring).

    The forward values do not change (up to float rounding of the recomputed LayerNorm and GELU).
    """
    with ExitStack() as stack:
        for module in adapter.model.modules():
            if isinstance(module, nn.LayerNorm):
                stack.enter_context(_instance_forward(module, _layer_norm_std_detached(module)))
            elif isinstance(module, nn.GELU):
                stack.enter_context(_instance_forward(module, _gelu_identity_rule(module)))
        stack.enter_context(adapter.explicit_attention())
        for module in adapter.attention_probability_modules():
            handle = module.register_forward_hook(lambda _m, _args, out: out.detach())
            stack.callback(handle.remove)
        yield


def conservative_relevance(adapter, inputs: Tensor, targets: Tensor | None,
                           blocks: Sequence[int] = (0,)) -> dict[int, RelevanceResult]:
    """``cp-lrp`` relevance of each patch token, read at the input of each of ``blocks``.

    adapter: ``napari_g3dvit.models.find_adapter(model)``; the model must already be prepared
             (``prepared_model``: eval mode, frozen parameters, on the inputs' device).
    inputs:  [B, C, F, H, W]; targets: [B] classes, or None for each input's prediction.
    blocks:  0 for the transformer's input (the published readout), k for the residual stream
             entering block k; all from the same single backward.

    Returns ``{block: RelevanceResult}``.
    """
    depth = len(adapter.blocks)
    chosen = list(dict.fromkeys(int(b) for b in blocks))
    bad = [b for b in chosen if not 0 <= b < depth]
    if bad or not chosen:
        raise SettingsError(f"relevance_block must be a block index from 0 to {depth - 1} (this ViT has "
                            f"{depth} blocks); got {bad[0] if bad else 'none'}")
    seen: dict[int, Tensor] = {}

    def entry(tokens: Tensor) -> Tensor:
        leaf = tokens.detach().requires_grad_(True)  # the graph starts at the transformer's input
        seen[0] = leaf
        return leaf

    def capture(block: int):
        def hook(_module, args):
            seen.setdefault(block, args[0])
        return hook

    geometry = adapter.geometry
    with ExitStack() as stack:
        stack.enter_context(conservative_rules(adapter))
        handle = adapter.token_entry_hook(entry)
        stack.callback(handle.remove)
        for block in chosen:
            if block:
                handle = adapter.block_input_module(block).register_forward_pre_hook(capture(block))
                stack.callback(handle.remove)
        with torch.enable_grad():
            logits = adapter.forward(inputs)
            targets = resolve_targets(logits.detach(), targets)
            score = target_logits(logits, targets)
            if not score.requires_grad or 0 not in seen:
                raise ModelError("the class score does not depend on the ViT's input tokens, so cp-lrp cannot run")
            missing = [b for b in chosen if b not in seen]
            if missing:
                raise ModelError(f"block {missing[0]}'s input was not seen in the forward pass")
            wanted = [seen[b] for b in chosen]
            grads = torch.autograd.grad(score.sum(), wanted, allow_unused=True)
    results = {}
    for block, tokens, grad in zip(chosen, wanted, grads):
        if grad is None:
            grad = torch.zeros_like(tokens)
        relevance = (tokens.detach() * grad).sum(dim=-1)  # [B, T]
        results[block] = RelevanceResult(
            scores=relevance[:, relevance.shape[1] - geometry.num_patches :],
            logits=logits.detach(), targets=targets.detach(), block=block,
            total=relevance.sum(dim=1).detach())
    return results


def relevance_layer(block: int) -> str:
    """The "layer" a cp-lrp map reports for a relevance read at ``block``'s input."""
    from ..registry import METHOD_LAYERS

    return METHOD_LAYERS["cp-lrp"] if block == 0 else f"input of block {block} (conservative)"


def conservative_pass(batch, methods: list[str]) -> list:
    """The cp-lrp family's pass (``explaining.PassInput`` in): one forward and one backward."""
    from ..explaining import MapPart

    block = batch.settings.relevance_block
    result = conservative_relevance(batch.adapter, batch.inputs, batch.targets, blocks=(block,))[block]
    return [MapPart("cp-lrp", relevance_layer(block), result.scores, result.logits, result.targets)]
