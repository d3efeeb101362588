"""The result of explaining a volume: the map, the prediction and the settings behind them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Explanation:
    """A class-activation map of one volume, or of a series of timepoints.

    heatmap:       float32 in [0, 1], the volume's shape: (D, H, W) or (T, D, H, W).
    token_map:     float32 token grid (F, Gh, Gw) or (T, F, Gh, Gw), after ReLU, min-max
                   normalisation and threshold, before upsampling.
    target:        the explained class: an int, or one per timepoint (int array of length T).
    probabilities: softmax of the model's scores, (K,) or (T, K); for a model with a single
                   logit, its sigmoid, (1,) or (T, 1).
    method, layer, pooling, threshold, upsample: the settings used.
    extra:         what a method adds: its cost (occlusion's forwards), or for ``method="auto"``
                   the criterion, every candidate's score and the choice.
    """

    heatmap: np.ndarray
    token_map: np.ndarray
    target: int | np.ndarray
    probabilities: np.ndarray
    method: str
    layer: str
    pooling: str
    threshold: float | None
    upsample: str
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    @property
    def predicted(self) -> int | np.ndarray:
        """The class the model predicts, per timepoint for a series (1 for a single logit >= 0.5)."""
        if self.probabilities.shape[-1] == 1:
            pred = (self.probabilities[..., 0] >= 0.5).astype(np.int64)
        else:
            pred = np.argmax(self.probabilities, axis=-1)
        return int(pred) if pred.ndim == 0 else pred

    @property
    def settings(self) -> dict:
        """The settings as plain JSON-friendly values (for layer metadata and file headers)."""
        return {
            "method": self.method,
            "layer": self.layer,
            "pooling": self.pooling,
            "threshold": self.threshold,
            "upsample": self.upsample,
            "device": self.device,
            "target": self.target if isinstance(self.target, int) else self.target.tolist(),
            **({"details": self.extra} if self.extra else {}),
        }
