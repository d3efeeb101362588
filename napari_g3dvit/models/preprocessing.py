"""From a scanner volume to the model's input, and the heatmap back onto the scanner's voxels.

A spec (the ``preprocessing`` section of a model config)::

    {"axes": [0, 1, 2],                     # volume axis feeding the model's frames, height, width
     "crop": [[1, 0], [10, 9], [1, 0]],     # voxels removed (before, after) on each volume axis;
                                            # negative values pad with zeros instead
     "resample": false,                     # true: resize (trilinear) to the model's input size
     "normalize": "zscore"}                 # none | zscore | minmax, per volume

Volume axes are the axes of the array as given (time, when present, is axis 0 and is kept).
``to_model`` and ``to_volume`` are exact inverses on the voxels the crop keeps; voxels the crop
removes come back as 0 in the heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import VolumeError
from .config import ConfigError, NORMALIZATIONS
from .geometry import _fmt


@dataclass(frozen=True)
class Preprocessing:
    """A checked preprocessing spec; see the module docstring."""

    axes: tuple[int, int, int] = (0, 1, 2)
    crop: tuple[tuple[int, int], ...] = ((0, 0), (0, 0), (0, 0))
    resample: bool = False
    normalize: str = "none"

    @classmethod
    def from_config(cls, spec: dict | None) -> "Preprocessing":
        if spec is None:
            return cls()
        if not isinstance(spec, dict):
            raise ConfigError("config preprocessing must be an object (axes, crop, resample, normalize)")
        unknown = set(spec) - {"axes", "crop", "resample", "normalize"}
        if unknown:
            raise ConfigError(f"config preprocessing has unknown field(s): {', '.join(sorted(unknown))}")
        axes = tuple(spec.get("axes", (0, 1, 2)))
        if sorted(axes) != [0, 1, 2]:
            raise ConfigError(f"config preprocessing.axes must order the axes 0, 1, 2, got {list(axes)}")
        crop = spec.get("crop", [[0, 0]] * 3)
        try:
            crop = tuple((int(a), int(b)) for a, b in crop)
        except (TypeError, ValueError) as err:
            raise ConfigError("config preprocessing.crop must be three [before, after] pairs of whole numbers") from err
        if len(crop) != 3:
            raise ConfigError("config preprocessing.crop must be three [before, after] pairs, one per volume axis")
        normalize = spec.get("normalize", "none")
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"config preprocessing.normalize must be one of {', '.join(NORMALIZATIONS)}")
        return cls(axes=axes, crop=crop, resample=bool(spec.get("resample", False)), normalize=normalize)

    def cropped_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Spatial shape after crop/pad, before the axes are reordered."""
        out = tuple(s - a - b for s, (a, b) in zip(shape, self.crop))
        if min(out) < 1:
            raise VolumeError(
                f"the volume is {_fmt(shape)} voxels; the model's crop {[list(c) for c in self.crop]} "
                "removes all of it on some axis"
            )
        return out

    def to_model(self, series: torch.Tensor, model_shape: tuple[int, int, int] | None) -> torch.Tensor:
        """[T, D, H, W] scanner voxels -> [T, F, Hm, Wm] model input (normalised)."""
        self.cropped_shape(tuple(series.shape[1:]))  # a crop larger than the volume: say so
        x = _crop_or_pad(series, self.crop)
        x = x.permute(0, *(1 + a for a in self.axes))
        if model_shape is not None and tuple(x.shape[1:]) != tuple(model_shape):
            if not self.resample:
                raise VolumeError(
                    f"the volume is {_fmt(series.shape[1:])} voxels; after the model's crop and axis "
                    f"order it is {_fmt(x.shape[1:])}, but the model takes {_fmt(model_shape)}. "
                    "Use a volume on the grid the model was trained on, or set preprocessing "
                    "crop/resample in the model's config"
                )
            x = F.interpolate(x[:, None], size=tuple(model_shape), mode="trilinear", align_corners=False)[:, 0]
        return _normalise(x, self.normalize)

    def to_volume(self, maps: torch.Tensor, volume_shape: tuple[int, int, int]) -> torch.Tensor:
        """[T, F, Hm, Wm] maps on the model grid -> [T, D, H, W] on the scanner voxels.

        Undoes resample, axis order and crop; voxels the crop removed are 0.
        """
        cropped = self.cropped_shape(volume_shape)
        permuted = tuple(cropped[a] for a in self.axes)
        if tuple(maps.shape[1:]) != permuted:
            maps = F.interpolate(maps[:, None], size=permuted, mode="trilinear", align_corners=False)[:, 0]
            maps = maps.clamp(0.0, 1.0)
        inverse = [0] * 3
        for model_axis, volume_axis in enumerate(self.axes):
            inverse[volume_axis] = model_axis
        maps = maps.permute(0, *(1 + a for a in inverse))
        return _crop_or_pad(maps, tuple((-a, -b) for a, b in self.crop))


def _crop_or_pad(x: torch.Tensor, crop: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """[T, D, H, W]: remove (before, after) voxels per spatial axis; negative amounts zero-pad."""
    pad = []
    for before, after in reversed(crop):  # F.pad wants the last axis first
        pad += [-before, -after]
    return F.pad(x, pad) if any(pad) else x


def _normalise(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-volume intensity normalisation of [T, ...]."""
    if mode == "none":
        return x
    flat = x.reshape(x.shape[0], -1).double()
    if mode == "zscore":
        mean, std = flat.mean(1), flat.std(1)
        std = torch.where(std > 0, std, torch.ones_like(std))
        out = (flat - mean[:, None]) / std[:, None]
    else:
        low, high = flat.amin(1), flat.amax(1)
        span = torch.where(high > low, high - low, torch.ones_like(high))
        out = (flat - low[:, None]) / span[:, None]
    return out.reshape(x.shape).float()
