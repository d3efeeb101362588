"""One forward and one backward stopped at the hooked layers.

The engine freezes the model's parameters, so nothing before the first hooked layer builds an
autograd graph, and swaps that layer's output for a fresh leaf that requires grad; the
backward (``torch.autograd.grad``) therefore runs only from the score down to that leaf and
computes no parameter gradients. Every layer and every method is served by the same pass.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..errors import LayerError, ModelError
from ..models.layers import is_token_sequence
from .result import resolve_targets, target_logits


@dataclass
class Capture:
    """What one pass collected, all detached, on the run's device.

    logits:      [B, K] class scores of the whole model.
    targets:     [B] class whose raw logit was back-propagated.
    activations: layer name -> [B, T, C] output of that layer (T = prefix + patches, or patches).
    gradients:   layer name -> [B, T, C] d score / d activation.
    attention:   every block's attention probabilities [B, heads, T, T] (when asked for).
    attention_grads: their gradients (when asked for), else None.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]
    attention: list = field(default_factory=list)
    attention_grads: list | None = None


_model_locks: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises passes over ``model`` (one per model, made on first use)."""
    with _locks_guard:
        lock = _model_locks.get(model)
        if lock is None:
            lock = _model_locks[model] = threading.RLock()
        return lock


@contextmanager
def prepared_model(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Eval mode, frozen parameters and the run's device; all put back afterwards, also on error.

    Holds the model's lock throughout: explain calls on one model from several threads (a widget
    run and a script) take turns, so none sees another's hooks or frozen state, and the state
    each one restores is the model's own.
    """
    with model_lock(model):
        with _prepared(model, device) as prepared:
            yield prepared


@contextmanager
def _prepared(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        raise ModelError(
            "the model's weights are spread over several devices "
            f"({', '.join(sorted(map(str, devices)))}); move it to one device first"
        )
    home = devices.pop() if devices else device
    try:
        if home != device:
            model.to(device)
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        yield model
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode
        if home != device:
            model.to(home)


class _LayerRecorder:
    """Forward hooks that keep each hooked layer's output and start the graph at the first."""

    def __init__(self, layers: dict[str, nn.Module], batch: int, num_tokens: int, num_patches: int):
        self.outputs: dict[str, torch.Tensor] = {}
        self._expected = (batch, num_tokens, num_patches)
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            batch, num_tokens, num_patches = self._expected
            if not is_token_sequence(output, batch, num_tokens, num_patches):
                found = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
                raise LayerError(
                    f"layer {name!r} outputs {found}, not a token sequence "
                    f"[batch, {num_tokens} tokens, channels] of this model; pick a layer from "
                    "napari_g3dvit.token_layers(model)"
                )
            if name in self.outputs:
                raise LayerError(f"layer {name!r} runs more than once per forward pass")
            if not output.requires_grad:  # the first hooked tensor to run: the graph starts here
                output = output.detach().requires_grad_(True)
            self.outputs[name] = output
            return output

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_capture(
    adapter,
    inputs: torch.Tensor,
    layers: dict[str, nn.Module],
    targets: torch.Tensor | None,
    attention: bool = False,
    attention_grads: bool = False,
) -> Capture:
    """One forward of ``adapter.model`` and one backward stopped at what is asked for.

    inputs:    [B, C, frames, H, W] on the run's device (the model must already be prepared).
    targets:   [B] class per input, or None for each input's predicted class.
    layers:    layers whose activations and gradients are kept (the CAM methods).
    attention: also keep every block's attention probabilities [B, heads, T, T]; with
               ``attention_grads`` their gradients too. The CAM layers and the attention maps
               share the one forward and the one backward; the graph starts at whichever of
               them runs first.
    """
    geometry = adapter.geometry
    names = list(layers)
    with ExitStack() as stack:
        recorder = _LayerRecorder(layers, inputs.shape[0], geometry.num_tokens, geometry.num_patches)
        stack.callback(recorder.remove)
        maps_recorder = None
        if attention:
            from .attention import AttentionRecorder

            stack.enter_context(adapter.explicit_attention())
            maps_recorder = AttentionRecorder(adapter.attention_probability_modules(),
                                              (inputs.shape[0], geometry.num_tokens), attention_grads)
            stack.callback(maps_recorder.remove)
        # the CLS fast path computes the last block's attention for one query: not with attention
        fast = not attention and adapter.supports_cls_fast_path(list(layers.values()))
        with torch.set_grad_enabled(bool(names) or attention_grads):
            logits = adapter.forward(inputs, fast=fast)
            missing = [name for name in layers if name not in recorder.outputs]
            if missing:
                raise LayerError(
                    f"layer {missing[0]!r} did not run when the model was called; pick a layer "
                    "from napari_g3dvit.token_layers(model)"
                )
            maps = []
            if maps_recorder is not None:
                absent = [i for i, probs in enumerate(maps_recorder.maps) if probs is None]
                if absent:
                    raise ModelError(
                        f"block {absent[0]}'s attention probabilities were not seen in the forward "
                        "pass (a fused attention kernel?), so attention-based methods cannot run"
                    )
                maps = list(maps_recorder.maps)
            targets = resolve_targets(logits.detach(), targets)
            wanted = [recorder.outputs[n] for n in names] + (maps if attention_grads else [])
            grads = []
            if wanted:
                score = target_logits(logits, targets).sum()
                if not score.requires_grad:
                    if names:
                        raise LayerError(
                            f"the score does not depend on layer {names[0]!r}; pick a layer inside the ViT "
                            "that the class score is computed from"
                        )
                    raise ModelError("the class score does not depend on the ViT's attention maps")
                grads = list(torch.autograd.grad(score, wanted, allow_unused=True))
    gradients = layer_gradients(adapter, names, grads[: len(names)])
    map_grads = None
    if attention_grads:
        map_grads = [torch.zeros_like(m) if g is None else g for m, g in zip(maps, grads[len(names):])]
    return Capture(
        logits=logits.detach(),
        targets=targets.detach(),
        activations={n: recorder.outputs[n].detach() for n in names},
        gradients=gradients,
        attention=[m.detach() for m in maps],
        attention_grads=map_grads,
    )


def layer_gradients(adapter, names: list[str], grads) -> dict[str, torch.Tensor]:
    """{name: gradient [B, T, C]}; LayerError when a layer's patch tokens got no gradient."""
    gradients = {}
    for name, grad in zip(names, grads):
        patch_grads = None if grad is None else grad[:, grad.shape[1] - adapter.geometry.num_patches :]
        if patch_grads is None or not bool(patch_grads.any()):
            raise LayerError(_zero_gradient_reason(name, grad, adapter.default_layer))
        gradients[name] = grad
    return gradients


def _zero_gradient_reason(name: str, grad: torch.Tensor | None, default_layer: str) -> str:
    """Why no patch token of ``name`` has a gradient, judged from the gradient actually seen.

    grad: [B, T, C] or None. Zero everywhere (prefix tokens included) means the score does not
    move with this layer for this input at all, which a default-layer suggestion cannot fix;
    zero on the patch tokens only is the CLS readout after the last attention.
    """
    if grad is None or not bool(grad.any()):
        return (
            f"the class score does not change with layer {name!r} for this input: its gradient is "
            "zero for every token, the CLS token included. Something between the ViT and the score "
            "blocks it (for example a ReLU in the head whose inputs are all negative, or a saturated "
            "output); another layer will not help. Check the model's head, or explain another target "
            "class"
        )
    hint = (f" Hook a layer inside or before the last block, e.g. {default_layer!r} (the default)"
            if name != default_layer else "")
    return (
        f"the gradients at layer {name!r} are zero for every patch token (only the prefix tokens "
        "have one): with a CLS readout the patch tokens after the last attention no longer reach "
        f"the score.{hint}"
    )
