"""Which files a cohort run explains, and where each one's outputs go (BIDS derivative names).

An input keeps its source's entities: ``sub-01_ses-1_task-rest_run-2_bold.nii.gz`` explained
with ``g3dvit`` becomes ``sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_desc-g3dvit_heatmap.nii.gz``
beside ``..._heatmap.json`` (the sidecar), ``..._peaks.tsv`` and, with an atlas, ``..._regions.tsv``. BIDS labels
are alphanumeric, so a method's ``desc`` label drops its hyphens (``gradcam-elementwise`` ->
``gradcamelementwise``).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import G3DViTError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
MAP_SUFFIX = "heatmap"


class CohortError(G3DViTError):
    """A cohort run cannot start: no dataset, no inputs, bad options."""


def strip_nifti_extension(name: str) -> str:
    for ext in NIFTI_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def desc_label(method: str) -> str:
    """A method name as a BIDS label (letters and digits only)."""
    return re.sub(r"[^A-Za-z0-9]", "", method)


def entities_of(filename: str) -> tuple[list[tuple[str, str]], str | None]:
    """``([(key, value), ...], suffix)`` of a BIDS-like file name, in the name's own order.

    ``sub-01_task-rest_run-2_bold.nii.gz`` -> ``([("sub", "01"), ("task", "rest"), ("run", "2")], "bold")``;
    a name without entities gives ``([], None)``.
    """
    parts = strip_nifti_extension(filename).split("_")
    pairs = [tuple(p.split("-", 1)) for p in parts[:-1] if "-" in p]
    if not pairs or len(pairs) != len(parts) - 1 or "-" in parts[-1]:
        return [], None
    return [(k, v) for k, v in pairs], parts[-1]


@dataclass(frozen=True)
class Input:
    """One file to explain and the folder (relative to the output folder) its outputs go to.

    entities: the BIDS entities of its name (``sub``, ``ses``, ``task``, ``run``, ...), empty for
    a file whose name has none.
    """

    path: Path
    out_folder: Path = Path(".")
    entities: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """The output name's start: the source's entities without ``desc``, or its file stem."""
        pairs, _ = entities_of(self.path.name)
        if not pairs:
            return strip_nifti_extension(self.path.name)
        return "_".join(f"{k}-{v}" for k, v in pairs if k != "desc")

    def outputs(self, out_dir: str | os.PathLike, method: str) -> "Outputs":
        name = f"{self.stem}_desc-{desc_label(method)}"
        folder = Path(out_dir) / self.out_folder
        return Outputs(heatmap=folder / f"{name}_{MAP_SUFFIX}.nii.gz", sidecar=folder / f"{name}_{MAP_SUFFIX}.json",
                       regions=folder / f"{name}_regions.tsv", timeseries=folder / f"{name}_timeseries.tsv",
                       error=Path(out_dir) / "logs" / f"{name}_error.json", peaks=folder / f"{name}_peaks.tsv")

    @property
    def label(self) -> str:
        """How messages name it: the path relative to its dataset when known."""
        return str(self.entities.get("_relpath") or self.path)


@dataclass(frozen=True)
class Outputs:
    """Where one input's results for one method go; the sidecar is written last."""

    heatmap: Path
    sidecar: Path
    regions: Path
    timeseries: Path  # a 4D run's time course (the widget's Time course table)
    error: Path
    peaks: Path  # the map's clusters and their peaks in mm (napari_g3dvit.peaks)


def _participant(label: str) -> str:
    return label[4:] if label.startswith("sub-") else label


def bids_inputs(bids_dir: str | os.PathLike, participants: list[str] | None = None,
                suffix: str = "bold") -> list[Input]:
    """The raw NIfTI files of a BIDS dataset with ``suffix``, for the given participants (all when None)."""
    bids_dir = Path(bids_dir)
    if not (bids_dir / "dataset_description.json").is_file():
        raise CohortError(f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json")
    from bids import BIDSLayout

    try:
        layout = BIDSLayout(str(bids_dir), validate=False)
    except Exception as err:  # pybids raises its own types for unreadable datasets
        raise CohortError(f"{bids_dir} could not be read as a BIDS dataset: {err}") from err
    subjects = layout.get_subjects()
    wanted = [_participant(p) for p in participants] if participants else subjects
    missing = sorted(set(wanted) - set(subjects))
    if missing:
        raise CohortError(f"no participant {', '.join('sub-' + m for m in missing)} in {bids_dir} "
                          f"(it has {', '.join('sub-' + s for s in subjects) or 'none'})")
    files = layout.get(subject=wanted, suffix=suffix, extension=list(NIFTI_EXTENSIONS), return_type="object")
    inputs = []
    for f in sorted(files, key=lambda f: f.path):
        path = Path(f.path).resolve()
        rel = path.relative_to(bids_dir.resolve())
        entities = dict(entities_of(path.name)[0])
        entities["_relpath"] = str(rel)
        inputs.append(Input(path=path, out_folder=rel.parent, entities=entities))
    if not inputs:
        raise CohortError(f"no *_{suffix}.nii[.gz] files for {', '.join('sub-' + w for w in wanted)} in {bids_dir}")
    return inputs


def loose_inputs(patterns: list[str]) -> list[Input]:
    """Files named directly or by glob patterns (``g3dvit batch``); outputs go flat into the output folder."""
    paths: list[Path] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise CohortError(f"no file matches {pattern!r}")
        for name in found:
            path = Path(name)
            if not path.is_file():
                raise CohortError(f"{name} is not a file")
            paths.append(path.resolve())
    unique = list(dict.fromkeys(paths))
    stems: dict[str, Path] = {}
    inputs = []
    for path in unique:
        item = Input(path=path, entities=dict(entities_of(path.name)[0]))
        if item.stem in stems:
            raise CohortError(f"{stems[item.stem]} and {path} would write the same outputs ({item.stem}_...); "
                              "rename one or run them into different --out folders")
        stems[item.stem] = path
        inputs.append(item)
    return inputs
