"""Token geometry: how a 3D ViT cuts a volume into a grid of patch tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import VolumeError

AXIS_NAMES = ("frames (depth)", "height", "width")


def _fmt(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


@dataclass(frozen=True)
class TokenGeometry:
    """What the engine needs to know about a ViT's tokens.

    patch_size:  voxels per token along (frames, height, width) of the model input.
    num_patches: number of patch tokens N the position embedding holds.
    num_prefix:  tokens before the patches in the sequence (1 for a CLS token).
    channels:    input channels the patch embedding expects.
    input_shape: the model's (frames, height, width) input size, when the model records it.
    """

    patch_size: tuple[int, int, int]
    num_patches: int
    num_prefix: int
    channels: int
    input_shape: tuple[int, int, int] | None = None

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix

    def probe_shape(self) -> tuple[int, int, int]:
        """An input (frames, height, width) that yields exactly ``num_patches`` tokens.

        The recorded input shape when known; otherwise a column of patches, which gives the
        same token-sequence shapes at every layer as the true grid would.
        """
        if self.input_shape is not None:
            return self.input_shape
        pf, ph, pw = self.patch_size
        return (self.num_patches * pf, ph, pw)

    def grid_for(self, spatial_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (F, Gh, Gw) for a volume of ``spatial_shape`` (D, H, W) voxels.

        Raises VolumeError, in the user's words, when the volume does not fit the model.
        """
        shape = tuple(int(s) for s in spatial_shape)
        if self.input_shape is not None and shape != tuple(self.input_shape):
            raise VolumeError(
                f"the volume is {_fmt(shape)} voxels but this model takes "
                f"{_fmt(self.input_shape)} (frames x height x width); crop, pad or resample it "
                "to that size, or give the model a preprocessing config"
            )
        for size, patch, name in zip(shape, self.patch_size, AXIS_NAMES):
            if size % patch:
                raise VolumeError(
                    f"the volume is {_fmt(shape)} voxels; its {name} axis ({size}) is not a "
                    f"multiple of the model's patch size {patch} on that axis "
                    f"(patches are {_fmt(self.patch_size)} voxels)"
                )
        grid = tuple(s // p for s, p in zip(shape, self.patch_size))
        if math.prod(grid) != self.num_patches:
            hint = ""
            side = round(self.num_patches ** (1 / 3))
            if side**3 == self.num_patches:
                hint = f", e.g. {_fmt(side * p for p in self.patch_size)} voxels"
            raise VolumeError(
                f"the volume is {_fmt(shape)} voxels, which this model cuts into "
                f"{_fmt(grid)} = {math.prod(grid)} patches, but the model was built for "
                f"{self.num_patches} patches{hint}"
            )
        return grid  # type: ignore[return-value]
