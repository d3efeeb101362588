"""npe2 writers: Image and Labels layers to NIfTI, with their source file's affine restored."""

from __future__ import annotations

from .volumes import write_nifti


def _write(path: str, data, attributes: dict) -> list[str]:
    return [write_nifti(path, data, attributes.get("metadata"), attributes.get("scale"),
                        attributes.get("translate"))]


def write_image(path: str, data, attributes: dict) -> list[str]:
    return _write(path, data, attributes)


def write_labels(path: str, data, attributes: dict) -> list[str]:
    return _write(path, data, attributes)
