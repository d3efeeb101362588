"""Errors raised for bad input, worded for the person who supplied it.

All derive from ``ValueError`` so callers that already catch it keep working. Faults of the file
system (a full disk, a read-only folder) come out as ``OSError``; nothing else reaches a user
of a public entry point.
"""

from __future__ import annotations


class G3DViTError(ValueError):
    """Base class of every error napari-g3dvit raises about its input."""


class VolumeError(G3DViTError):
    """The volume cannot be explained as given (dimensionality, shape, NaN/Inf)."""


class NiftiError(VolumeError):
    """A file that is not a readable NIfTI volume (or holds no voxels)."""


class ModelError(G3DViTError):
    """The model is not (or does not contain) a supported 3D Vision Transformer."""


class LayerError(G3DViTError):
    """The chosen hook layer cannot give a token map."""


class SettingsError(G3DViTError):
    """An option of ``explain`` has a value outside what it accepts."""
