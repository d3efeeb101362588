"""3D metrics for attribution maps, usable on any map and any ground-truth mask.

Maps are arrays of voxel values (D, H, W) where higher means "more relevant"; masks are
boolean arrays of the same shape. Ties in rankings are broken explicitly: by token when a patch
size is given (each token ranked by its mean value, ties by token index), else by voxel index
in C order.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

Predict = Callable[[np.ndarray], np.ndarray]  # volumes [n, D, H, W] -> probabilities [n, K]
BASELINES = ("zero", "mean", "blur")


def _check(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap, mask = np.asarray(heatmap, dtype=np.float64), np.asarray(mask, dtype=bool)
    if heatmap.shape != mask.shape:
        raise ValueError(f"the map is {heatmap.shape} but the mask is {mask.shape}; they must match")
    if not mask.any():
        raise ValueError("the mask is empty")
    return heatmap, mask


def relevance_mass(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total inside the mask (0 for an empty map). Chance: ``mask.mean()``."""
    heatmap, mask = _check(heatmap, mask)
    heatmap = np.clip(heatmap, 0, None)
    total = heatmap.sum()
    return float(heatmap[mask].sum() / total) if total > 0 else 0.0


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """True when the map's maximum (first in C order among ties) lies in the mask.

    ``tolerance`` widens the mask by that many voxels in every direction (a cube).
    """
    heatmap, mask = _check(heatmap, mask)
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    if tolerance <= 0:
        return bool(mask[peak])
    window = tuple(slice(max(p - tolerance, 0), p + tolerance + 1) for p in peak)
    return bool(mask[window].any())


def ranking(heatmap: np.ndarray, patch: tuple[int, int, int] | None = None) -> np.ndarray:
    """Flat voxel indices, most relevant first, ties broken as the module docstring says."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if patch is None:
        return np.argsort(-heatmap.ravel(), kind="stable")
    grid = tuple(s // p for s, p in zip(heatmap.shape, patch))
    if any(s % p for s, p in zip(heatmap.shape, patch)):
        raise ValueError(f"the map {heatmap.shape} is not a whole number of {patch} patches")
    blocks = heatmap.reshape(grid[0], patch[0], grid[1], patch[1], grid[2], patch[2])
    token_order = np.argsort(-blocks.mean(axis=(1, 3, 5)).ravel(), kind="stable")
    voxel_ids = np.arange(heatmap.size).reshape(blocks.shape).transpose(0, 2, 4, 1, 3, 5)
    return voxel_ids.reshape(-1, int(np.prod(patch)))[token_order].ravel()


def topk_iou(heatmap: np.ndarray, mask: np.ndarray, percent: float = 5.0,
             patch: tuple[int, int, int] | None = None) -> float:
    """IoU of the top ``percent`` % of voxels (by ``ranking``) with the mask."""
    heatmap, mask = _check(heatmap, mask)
    k = max(1, int(round(heatmap.size * percent / 100)))
    top = np.zeros(heatmap.size, dtype=bool)
    top[ranking(heatmap, patch)[:k]] = True
    flat = mask.ravel()
    return float((top & flat).sum() / (top | flat).sum())


def gaussian_blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a (D, H, W) volume, edges replicated."""
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    out = torch.as_tensor(np.asarray(volume, dtype=np.float64))[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = -1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = torch.nn.functional.conv3d(torch.nn.functional.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0, 0].numpy().astype(np.float32)


def baseline_volume(volume: np.ndarray, kind: str = "blur", sigma: float = 5.0) -> np.ndarray:
    """What removed voxels are replaced by: zeros, the volume's mean, or a blurred copy."""
    if kind == "zero":
        return np.zeros_like(volume, dtype=np.float32)
    if kind == "mean":
        return np.full(volume.shape, float(np.mean(volume)), dtype=np.float32)
    if kind == "blur":
        return gaussian_blur(volume, sigma)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")


def perturbation_curve(predict: Predict, volume: np.ndarray, heatmap: np.ndarray, target: int,
                       mode: str = "deletion", baseline: str = "blur", steps: int = 20,
                       patch: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Deletion or insertion curve of the target probability and its AUC over fraction [0, 1].

    deletion: the most relevant voxels first are replaced by the baseline (lower AUC is better).
    insertion: starting from the baseline, the most relevant voxels are revealed (higher is better).
    With ``patch``, whole tokens move at once. AUC by the trapezoid rule.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError("mode is 'deletion' or 'insertion'")
    volume = np.asarray(volume, dtype=np.float32)
    order = ranking(heatmap, patch)
    base = baseline_volume(volume, baseline)
    unit = 1 if patch is None else int(np.prod(patch))
    units = volume.size // unit
    counts = np.unique(np.round(np.linspace(0, units, steps + 1)).astype(int))
    batch = []
    for count in counts:
        chosen = np.zeros(volume.size, dtype=bool)
        chosen[order[: count * unit]] = True
        chosen = chosen.reshape(volume.shape)
        start, fill = (volume, base) if mode == "deletion" else (base, volume)
        batch.append(np.where(chosen, fill, start))
    probs = predict(np.stack(batch))[:, target]
    fractions = counts / units
    auc = float(np.sum((probs[1:] + probs[:-1]) / 2 * np.diff(fractions)))
    return fractions, probs, auc


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); 0 when one is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def cascade_randomized(model: nn.Module, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """Copies of ``model`` with weights re-drawn from the top down, one more stage each.

    Stages: the head after the ViT (if any), the ViT's classifier, then each transformer block
    from the last to the first. Each parameter is redrawn from a normal with its own mean and
    standard deviation (Adebayo et al.'s cascading randomisation).
    """
    from ..models import find_adapter

    adapter = find_adapter(model)
    vit = adapter.vit
    stages: list[tuple[str, list[str]]] = []
    prefix = adapter.prefix
    outer = [] if model is vit else [
        name for name, child in model.named_children()
        if not any(m is vit for m in child.modules()) and any(True for _ in child.parameters())
    ]
    if outer:
        stages.append(("head", outer))
    stages.append((adapter.readout[len(prefix):], [adapter.readout]))
    for i, block in reversed(list(enumerate(adapter.blocks))):
        stages.append((f"block {i}", [block]))
    generator = torch.Generator().manual_seed(seed)
    current = model
    out = []
    for label, names in stages:
        current = copy.deepcopy(current)
        modules = dict(current.named_modules())
        with torch.no_grad():
            for name in names:
                for param in modules[name].parameters():
                    std = float(param.std()) if param.numel() > 1 else 0.0
                    noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                    param.copy_(noise * (std or 1.0) + float(param.mean()))
        out.append((label, current))
    return out


def random_token_map(grid: tuple[int, int, int], seed: int) -> np.ndarray:
    """Uniform random values per token: the random-map baseline."""
    return np.random.default_rng(seed).random(grid).astype(np.float32)


def model_predictor(model: nn.Module, batch_size: int = 16) -> Predict:
    """``predict(volumes)`` -> softmax probabilities, with the model's own preprocessing, on the
    device the model is on."""
    from ..models import find_adapter
    from ..models.preprocessing import Preprocessing

    adapter = find_adapter(model)
    prep = Preprocessing.from_config((getattr(model, "g3dvit_config", None) or {}).get("preprocessing"))
    dev = next(model.parameters()).device
    channels = adapter.geometry.channels

    def predict(volumes: np.ndarray) -> np.ndarray:
        outs = []
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(volumes), batch_size):
                x = prep.to_model(torch.as_tensor(volumes[start : start + batch_size]).float(),
                                  adapter.geometry.input_shape)
                logits = adapter.logits(model(x[:, None].expand(-1, channels, -1, -1, -1).to(dev)))
                outs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(outs)

    return predict
