"""One forward and one backward stopped at the hooked layers.

The engine freezes the model's parameters, so nothing before the first hooked layer builds an
autograd graph, and swaps that layer's output for a fresh leaf that requires grad; the
backward (``torch.autograd.grad``) therefore runs only from the score down to that leaf and
computes no parameter gradients. Every layer and every method is served by the same pass.
"""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
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
    """

    logits: torch.Tensor
    targets: torch.Tensor
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]


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
            if not self.outputs:  # the first hooked layer to run: the graph starts here
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
) -> Capture:
    """One forward of ``adapter.model`` and one backward stopped at ``layers``.

    inputs:  [B, C, frames, H, W] on the run's device (the model must already be prepared).
    targets: [B] class per input, or None for each input's predicted class.
    """
    geometry = adapter.geometry
    recorder = _LayerRecorder(layers, inputs.shape[0], geometry.num_tokens, geometry.num_patches)
    fast = adapter.supports_cls_fast_path(list(layers.values()))
    try:
        with torch.enable_grad():
            if fast:
                with adapter.cls_fast_path():
                    output = adapter.model(inputs)
            else:
                output = adapter.model(inputs)
            logits = adapter.logits(output)
            if logits.ndim == 1:
                logits = logits[:, None]
            missing = [name for name in layers if name not in recorder.outputs]
            if missing:
                raise LayerError(
                    f"layer {missing[0]!r} did not run when the model was called; pick a layer "
                    "from napari_g3dvit.token_layers(model)"
                )
            targets = resolve_targets(logits.detach(), targets)
            score = target_logits(logits, targets).sum()
            names = list(layers)
            if not score.requires_grad:
                raise LayerError(
                    f"the score does not depend on layer {names[0]!r}; pick a layer inside the ViT "
                    "that the class score is computed from"
                )
            grads = torch.autograd.grad(
                score, [recorder.outputs[n] for n in names], allow_unused=True
            )
    finally:
        recorder.remove()
    gradients = {}
    for name, grad in zip(names, grads):
        patch_grads = None if grad is None else grad[:, grad.shape[1] - geometry.num_patches :]
        if patch_grads is None or not bool(patch_grads.any()):
            raise LayerError(_zero_gradient_reason(name, grad, adapter.default_layer))
        gradients[name] = grad
    return Capture(
        logits=logits.detach(),
        targets=targets.detach(),
        activations={n: recorder.outputs[n].detach() for n in names},
        gradients=gradients,
    )


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
