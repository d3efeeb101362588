"""``method="auto"``: the most faithful map, chosen on the volume itself, without ground truth.

Candidates are (method, layer) pairs: the CAM methods at the first and the last block's
attention-input LayerNorm, the attention methods, and occlusion when its cost fits the budget.
Each candidate's token map is scored by the MoRF drop (``cam.faithfulness``): how far the
target probability falls when its hottest tokens are replaced by the volume's mean. The best
candidate wins. ``choose_method`` makes the choice once (on a few volumes) so that it can be
reused for a whole series or cohort at the cost of the chosen method alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .errors import G3DViTError, LayerError
from .options import ATTENTION_METHODS, CAM_METHODS, METHOD_LAYERS

#: occlusion is a candidate when its forwards per volume stay within this budget
DEFAULT_OCCLUSION_BUDGET = 400
#: timepoints of a series the choice is made on (spread over the run)
CHOICE_VOLUMES = 3


@dataclass(frozen=True)
class MethodChoice:
    """The chosen method and layer, and every candidate's MoRF drop (higher = more faithful)."""

    method: str
    layer: str | None  # None for methods that use no single layer
    scores: dict[str, float] = field(default_factory=dict)
    criterion: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # candidates that could not run, and why

    def as_dict(self) -> dict:
        return {"criterion": self.criterion, "chosen": f"{self.method} @ {self.layer or METHOD_LAYERS[self.method]}",
                "scores": dict(self.scores), "skipped": dict(self.skipped)}


def _label(method: str, layer: str) -> str:
    return f"{method} @ {layer}"


def worst_occlusion_forwards(tokens: int) -> int:
    """Forwards fast occlusion may need for one volume at most: every 2x2x2 window once, then at
    most half the windows refined token by token."""
    windows = -(-tokens // 8)
    return windows + tokens // 2


def candidate_layers(model: nn.Module) -> list[str]:
    """The first and the last block's attention-input LayerNorm (the CAM candidates' layers)."""
    from .models import find_adapter

    adapter = find_adapter(model)
    last = len(adapter.blocks) - 1
    return list(dict.fromkeys([adapter.attention_norm(0), adapter.attention_norm(last)]))


def choose_method(model: nn.Module, volumes, target=None, device=None, preprocessing: dict | None = None,
                  occlusion_budget: int = DEFAULT_OCCLUSION_BUDGET, baseline: str | None = None,
                  pooling: str = "mean") -> MethodChoice:
    """Score every candidate on ``volumes`` ((D, H, W) or (T, D, H, W)) and pick the best.

    occlusion_budget: forwards per volume occlusion may take at most to be a candidate (fast mode:
    an eighth of the tokens, plus up to half of them refined); 0 leaves it out.
    """
    from .api import _as_series, _targets, explain, resolve_device
    from .cam.engine import prepared_model
    from .cam.faithfulness import CRITERION, morf_drop
    from .models import find_adapter
    from .models.preprocessing import Preprocessing

    adapter = find_adapter(model)
    series, _ = _as_series(volumes)
    if len(series) > CHOICE_VOLUMES:  # a few timepoints spread over the run
        picks = np.linspace(0, len(series) - 1, CHOICE_VOLUMES).round().astype(int)
        series = series[picks]
        if target is not None and np.ndim(target) == 1:
            target = list(np.asarray(target)[picks])
    layers = candidate_layers(model)
    families = [list(CAM_METHODS), list(ATTENTION_METHODS)]
    if occlusion_budget and worst_occlusion_forwards(adapter.geometry.num_patches) <= occlusion_budget:
        families.append(["occlusion"])
    common = dict(target=target, threshold=None, device=device, preprocessing=preprocessing, baseline=baseline,
                  pooling=pooling)
    candidates, skipped = {}, {}
    for family in families:  # a family that cannot run here (e.g. dead gradients) is left out
        try:
            maps = explain(model, series.numpy(), method=family, layer=layers, **common)
        except G3DViTError as err:
            for method in family:
                skipped[method] = str(err)
            continue
        for (method, layer), exp in maps.items():
            candidates.setdefault(_label(method, layer), (method, layer, exp))
    if not candidates:
        raise LayerError("no candidate method could explain this volume: " + "; ".join(sorted(set(skipped.values()))))
    first = next(iter(candidates.values()))[2]
    used_targets = torch.as_tensor(np.atleast_1d(first.target), dtype=torch.int64)
    config = getattr(model, "g3dvit_config", None) or {}
    prep = Preprocessing.from_config(preprocessing if preprocessing is not None else config.get("preprocessing"))
    inputs = prep.to_model(series, adapter.geometry.input_shape)[:, None]
    if adapter.geometry.channels != 1:
        inputs = inputs.expand(-1, adapter.geometry.channels, -1, -1, -1)
    dev = resolve_device(device)
    token_maps = {label: torch.as_tensor(exp.token_map).reshape(len(series), -1)
                  for label, (_, _, exp) in candidates.items()}
    with prepared_model(model, dev):
        drops = morf_drop(adapter, inputs.to(dev), token_maps, _targets(used_targets.numpy(), len(series)).to(dev))
    scores = {label: round(float(drop.mean()), 6) for label, drop in drops.items()}
    best = max(scores, key=scores.get)
    method, layer, _ = candidates[best]
    return MethodChoice(method=method, layer=layer if method in CAM_METHODS else None, scores=scores,
                        criterion=CRITERION, skipped=skipped)


def explain_auto(model: nn.Module, volume, layer=None, choice: MethodChoice | None = None, **settings):
    """``explain`` with the method (and layer) ``choose_method`` finds most faithful on ``volume``.

    A given ``choice`` is reused as it is (e.g. one made on a few volumes, for a whole cohort).
    ``layer`` is ignored: the choice includes it.
    """
    from .api import explain

    if choice is None:
        choice = choose_method(model, volume, target=settings.get("target"), device=settings.get("device"),
                               preprocessing=settings.get("preprocessing"),
                               baseline=settings.get("baseline"), pooling=settings.get("pooling", "mean"))
    result = explain(model, volume, method=choice.method, layer=choice.layer, **settings)
    return replace(result, extra={**result.extra, "auto": choice.as_dict()})
