"""``method="auto"``: the most faithful map, chosen on the volume itself, without ground truth.

Candidates are (method, layer, settings) triples taken from the registry's ``auto`` methods, in
order of priority, as long as they fit the choice's budget in forward passes (none by default):
cp-lrp (one forward and one backward), occlusion's first-order estimate (the same cost), the
attention methods (one pass), and the CAM methods at the first block's attention-input
LayerNorm (one pass). The model config's recommended (method, layer) joins them. Each candidate's token map
is scored by the relevance gain (``cam.faithfulness``): how much of the target probability the
map's top tokens keep on their own, minus how much is left without them, with tokens removed
from the sequence. Every candidate's insertions and its deletion at the largest count are measured
first; the two best then get their whole deletion curve, and the better of them wins (a tie
within ``TIE`` goes to the one listed first, the cheaper).

The choice is made once: later ``auto`` calls on the same model (same weights) and the same
input shape, target and settings reuse it at the cost of the chosen method alone (``rechoose``
forces a fresh one), and a series is judged on three of its timepoints: of up to 16 spread over
the run, those where the model is surest of the class explained.
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .errors import LayerError, ModelError
from .registry import METHOD_LAYERS, METHOD_SPECS, SETTINGS, spec

#: forward passes (a backward counted as one) a choice may cost per volume; None: no limit
DEFAULT_BUDGET: float | None = None
#: timepoints of a series the choice is made on: of up to CHOICE_POOL spread over the run, those
#: where the model is surest of the class explained
CHOICE_VOLUMES = 3
CHOICE_POOL = 16
#: auto's removal for its criterion when the caller names none
DEFAULT_REMOVAL = "drop"
#: candidates whose deletion curves are measured in full (the others are out after round one)
FINALISTS = 2
#: gains closer than this (in probability) are a tie, which goes to the candidate listed first:
#: the cheapest (cp-lrp), as a map the criterion cannot tell apart costs no more than it must
TIE = 0.005


@dataclass(frozen=True)
class Candidate:
    """A map auto may pick: a method, its hooked layer (CAM methods) and settings of its own."""

    method: str
    layer: str | None = None
    settings: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        where = self.layer or METHOD_LAYERS.get(self.method, "")
        extra = "".join(f", {k}={v}" for k, v in self.settings)
        return f"{self.method} @ {where}{extra}"


@dataclass(frozen=True)
class MethodChoice:
    """The chosen candidate, and every candidate's relevance gain (higher = more faithful)."""

    method: str
    layer: str | None  # None for methods that use no single layer
    settings: dict = field(default_factory=dict)  # the chosen candidate's own explain settings
    scores: dict[str, float] = field(default_factory=dict)
    curves: dict[str, dict] = field(default_factory=dict)  # label -> deletion / insertion means
    criterion: str = ""
    removal: str = DEFAULT_REMOVAL
    skipped: dict[str, str] = field(default_factory=dict)  # candidates that could not run, and why
    pruned: dict[str, str] = field(default_factory=dict)  # candidates left out for their cost
    seconds: float = 0.0
    volumes: int = 0

    @property
    def label(self) -> str:
        return Candidate(self.method, self.layer, tuple(sorted(self.settings.items()))).label

    def as_dict(self) -> dict:
        return {"criterion": self.criterion, "removal": self.removal, "chosen": self.label,
                "scores": dict(self.scores), "curves": dict(self.curves), "skipped": dict(self.skipped),
                "pruned": dict(self.pruned), "seconds": round(self.seconds, 3), "volumes": self.volumes}


def candidate_layers(model: nn.Module) -> list[str]:
    """The CAM candidates' layer: the first block's attention-input LayerNorm.

    At the last block the gradient methods' maps were close to chance or anti-correlated with
    occlusion on every model measured (REFERENCE section 8; docs/benchmarks.md), and never won
    auto's criterion there, so auto does not spend its time on them.
    """
    from .models import find_adapter

    return [find_adapter(model).attention_norm(0)]


def _criterion_forwards(tokens: int) -> tuple[float, float]:
    """Forward passes the criterion spends: (per candidate in round one, per finalist after it).

    A sequence of m of the N tokens costs about m / N of a forward."""
    from .cam.faithfulness import token_counts

    counts = token_counts(tokens)
    first = (tokens - counts[-1]) / tokens + sum(k / tokens for k in counts)
    return first, sum((tokens - k) / tokens for k in counts[:-1])


def candidates(model: nn.Module, budget: float | None = None, removal: str = DEFAULT_REMOVAL
               ) -> tuple[list[list[Candidate]], dict[str, str]]:
    """auto's candidates grouped by the explain call that makes them, in order of priority; and
    those left out, with why.

    budget: forward passes per volume the choice may cost (maps and criterion together); the
    groups that do not fit are left out, the first always runs. None: no limit.
    Returns ``([[Candidate, ...] per call], {label: reason})``.
    """
    from .models import find_adapter

    adapter = find_adapter(model)
    tokens = adapter.geometry.num_patches
    groups: list[tuple[float, list[Candidate]]] = []
    families: dict[str, list] = {}  # the registry's auto methods by family, in their rank's order
    for s in sorted((s for s in METHOD_SPECS if s.auto), key=lambda s: s.auto_rank):
        families.setdefault(s.family, []).append(s)
    for specs in families.values():  # one explain call per family
        layers = candidate_layers(model) if specs[0].uses_layer else [None]
        group = [Candidate(s.name, layer, tuple(sorted({**dict(s.auto_settings),
                                                         **({"baseline": removal} if "baseline" in s.settings else {})}
                                                        .items())))
                 for s in specs for layer in layers]
        cost = max(s.forwards(tokens) if s.auto_forwards is None else s.auto_forwards for s in specs)
        groups.append((cost, group))
    recommended = (getattr(model, "g3dvit_config", None) or {}).get("recommended_explanation") or {}
    method = recommended.get("method")
    if method in {s.name for s in METHOD_SPECS}:
        wanted = Candidate(method, recommended.get("layer") if spec(method).uses_layer else None)
        if all(wanted != c for _, group in groups for c in group):
            groups.append((spec(method).forwards(tokens), [wanted]))
    judged, final = _criterion_forwards(tokens)
    kept, pruned, spent = [], {}, FINALISTS * final
    for cost, group in groups:
        total = cost + judged * len(group)
        if budget is None or spent + total <= budget or not kept:
            kept.append(group)
            spent += total
        else:
            for c in group:
                pruned[c.label] = (f"its map and its scoring cost about {total:g} forwards; the budget of "
                                   f"{budget:g} was spent")
    return kept, pruned


def _judged_timepoints(adapter, inputs: torch.Tensor, target, device) -> np.ndarray:
    """The ``CHOICE_VOLUMES`` timepoints a series is judged on: of up to ``CHOICE_POOL`` spread over
    the run, those where the model is surest of the class explained (a map of "task" is best judged
    where the model sees task, not on rest timepoints). inputs [T, C, F, H, W] -> indices, in order."""
    from .cam.engine import prepared_model
    from .cam.result import batched_logits, resolve_targets, target_probability
    from .explaining import targets_for

    pool = np.unique(np.linspace(0, len(inputs) - 1, min(CHOICE_POOL, len(inputs))).round().astype(int))
    with prepared_model(adapter.model, device):
        logits = batched_logits(adapter, inputs[pool].to(device), 8).float()
    wanted = targets_for(target, len(inputs))
    classes = resolve_targets(logits, None if wanted is None else wanted[pool].to(logits.device))
    sure = target_probability(logits, classes).cpu().numpy()
    return np.sort(pool[np.argsort(-sure, kind="stable")[:CHOICE_VOLUMES]])


def _cache_key(model: nn.Module, shape, target, settings: dict) -> tuple:
    """What a reusable choice must match: the weights (by identity and version), the input shape,
    the target and the settings that change maps."""
    weights = tuple((id(p), p._version) for p in model.parameters())
    if target is None or np.ndim(target) == 0:
        wanted = None if target is None else int(target)
    else:
        wanted = ("per timepoint", tuple(sorted(set(np.asarray(target).tolist()))))
    return (weights, tuple(shape), wanted, json.dumps(settings, sort_keys=True, default=str))


_choices: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def choose_method(model: nn.Module, volumes, target=None, device=None, preprocessing: dict | None = None,
                  budget: float | None = DEFAULT_BUDGET, baseline: str | None = None, pooling: str = "mean",
                  **_ignored) -> MethodChoice:
    """Score auto's candidates on ``volumes`` ((D, H, W) or (T, D, H, W)) and pick the best.

    budget: forward passes per volume the candidates' maps may cost together (the cheapest
    candidates first; at least one group always runs). baseline: the removal of the criterion
    (``drop`` by default, or a painted baseline).
    """
    from .cam.engine import prepared_model
    from .cam.faithfulness import CRITERION, relevance_curves
    from .devices import resolve_device
    from .explaining import RunSettings, as_series, explain_methods, model_inputs, preprocessing_of, targets_for
    from .models import find_adapter

    started = time.perf_counter()
    removal = baseline or DEFAULT_REMOVAL
    adapter = find_adapter(model)
    dev = resolve_device(device)
    series, _ = as_series(volumes)
    prep = preprocessing_of(model, preprocessing)
    inputs = model_inputs(adapter, prep.to_model(series, adapter.geometry.input_shape))
    adapter.geometry.grid_for(tuple(inputs.shape[2:]))  # a volume the model cannot take is the user's error
    RunSettings(methods=("cp-lrp",), target=target, pooling=pooling, baseline=removal)  # so are bad settings
    if len(series) > CHOICE_VOLUMES:
        picks = _judged_timepoints(adapter, inputs, target, dev)
        series, inputs = series[picks], inputs[picks]
        if target is not None and np.ndim(target) == 1:
            target = list(np.asarray(target)[picks])
    groups, pruned = candidates(model, budget, removal)
    maps, found, skipped = {}, {}, {}
    for group in groups:  # a group that cannot run here (e.g. dead gradients) is left out
        first = group[0]
        own = dict(first.settings)
        try:
            settings = RunSettings(methods=tuple(dict.fromkeys(c.method for c in group)),
                                   layers=tuple(dict.fromkeys(c.layer for c in group)),
                                   target=target, threshold=None, device=device, preprocessing=preprocessing,
                                   pooling=pooling, **own)
            raw: dict = {}
            made = explain_methods(model, series.numpy(), settings, raw=raw)
        except (LayerError, ModelError) as err:  # this family cannot run on this model or volume
            for c in group:
                skipped[c.label] = str(err)
            continue
        for c in group:
            key = next((k for k in made if k[0] == c.method and (c.layer is None or k[1] == c.layer)), None)
            if key is not None:
                maps[c.label] = raw[key]
                found[c.label] = (c, made[key])
    if not maps:
        raise LayerError("no candidate method could explain this volume: " + "; ".join(sorted(set(skipped.values()))))
    first = next(iter(found.values()))[1]
    used_targets = torch.as_tensor(np.atleast_1d(first.target), dtype=torch.int64)
    with prepared_model(model, dev):
        curves = relevance_curves(adapter, inputs.to(dev), maps, targets_for(used_targets.numpy(), len(series)).to(dev),
                                  removal=removal, finalists=FINALISTS)
    scores = {label: round(float(c.gain.mean()), 6) for label, c in curves.items()}
    finalists = [label for label, c in curves.items() if c.complete]  # in candidate order
    top = max(scores[label] for label in finalists)
    best = next(label for label in finalists if scores[label] >= top - TIE)
    chosen = found[best][0]
    return MethodChoice(
        method=chosen.method, layer=chosen.layer if spec(chosen.method).uses_layer else None,
        settings=dict(chosen.settings), scores=scores,
        curves={label: {"deletion": round(float(c.deletion.nanmean()), 6), "insertion": round(float(c.insertion.mean()), 6),
                        "counts": list(c.counts), "finalist": c.complete} for label, c in curves.items()},
        criterion=CRITERION, removal=removal, skipped=skipped, pruned=pruned,
        seconds=time.perf_counter() - started, volumes=len(series))


def choice_for(model: nn.Module, volume, rechoose: bool = False, budget: float | None = DEFAULT_BUDGET,
               **settings) -> tuple[MethodChoice, bool]:
    """The choice for ``volume`` under ``model``: the one remembered for this model (same weights),
    input shape, target and settings, or a new one (then remembered). Returns (choice, reused)."""
    from .explaining import as_series

    series, _ = as_series(volume)
    choosing = {k: settings.get(k) for k in ("device", "preprocessing", "baseline", "pooling") if k in settings}
    key = _cache_key(model, series.shape[1:], settings.get("target"), {**choosing, "budget": budget, "device": None})
    remembered = _choices.setdefault(model, {})
    if not rechoose and key in remembered:
        return remembered[key], True
    choice = choose_method(model, series, target=settings.get("target"), budget=budget, **choosing)
    remembered.clear()  # one remembered choice per model: a changed model makes old keys stale
    remembered[key] = choice
    return choice, False


def explain_auto(model: nn.Module, volume, choice: MethodChoice | None = None, rechoose: bool = False,
                 budget: float | None = DEFAULT_BUDGET, **settings):
    """``explain`` with the candidate ``choose_method`` finds most faithful on ``volume``.

    A given ``choice`` is used as it is (e.g. one made on a few volumes, for a whole cohort).
    Otherwise the choice made earlier for this model, input shape, target and settings is
    reused, unless ``rechoose``; a new one is remembered for the next call. ``layer`` is
    ignored: the choice includes it.
    """
    from .devices import resolve_device
    from .explaining import RunSettings, explain_methods
    from .models import find_adapter

    find_adapter(model)  # not a ViT: said before anything else
    resolve_device(settings.get("device"))
    settings.pop("layer", None)
    progress = settings.pop("progress", None)
    RunSettings(methods=("cp-lrp",), **settings)  # bad settings: said before the choice is made
    reused = choice is not None
    if choice is None:
        choice, reused = choice_for(model, volume, rechoose=rechoose, budget=budget, **settings)
    own = {k: v for k, v in choice.settings.items() if k in SETTINGS}
    run = RunSettings(methods=(choice.method,), layers=(choice.layer,), **{**settings, **own})
    result = next(iter(explain_methods(model, volume, run, progress=progress).values()))
    return replace(result, extra={**result.extra, "auto": {**choice.as_dict(), "reused": reused}})
