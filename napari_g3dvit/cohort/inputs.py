"""Which files a cohort run explains, and where each one's outputs go (BIDS derivative names).

An input keeps its source's entities: ``sub-01_ses-1_task-rest_run-2_bold.nii.gz`` explained
with ``g3dvit`` becomes ``sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_desc-g3dvit_heatmap.nii.gz``
beside ``..._heatmap.json`` (the sidecar), ``..._peaks.tsv`` and, with an atlas, ``..._regions.tsv``. BIDS labels
are alphanumeric, so a method's ``desc`` label drops its hyphens (``gradcam-elementwise`` ->
``gradcamelementwise``). A source's own ``desc`` (fMRIPrep's ``desc-preproc``) is kept after the
method's, in camel case (``desc-g3dvitPreproc``), so two runs differing only in ``desc`` keep
two outputs.

Names, entities and output folders come from each file's own path, never from where a symbolic
link points: DataLad / OpenNeuro datasets link every file into ``.git/annex/objects`` (and a
file not fetched yet is a link whose target is missing: an input that fails, recorded with its
subject).
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


def desc_label(method: str, source_desc: str | None = None) -> str:
    """A method name as a BIDS label (letters and digits only), with the source's own ``desc``
    after it in camel case: ``("g3dvit", "preproc")`` -> ``"g3dvitPreproc"``."""
    label = re.sub(r"[^A-Za-z0-9]", "", method)
    if source_desc:
        label += camel(source_desc)
    return label


def camel(name: str) -> str:
    """A free-text name as an alphanumeric BIDS label part: "enlarged ventricles" -> "EnlargedVentricles"."""
    words = re.findall(r"[A-Za-z0-9]+", name)
    return "".join(w[:1].upper() + w[1:] for w in words)


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

    @property
    def source_desc(self) -> str | None:
        pairs, _ = entities_of(self.path.name)
        return dict(pairs).get("desc")

    def outputs(self, out_dir: str | os.PathLike, method: str) -> "Outputs":
        name = f"{self.stem}_desc-{desc_label(method, self.source_desc)}"
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


def absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute without following symbolic links (``Path.resolve`` would)."""
    return Path(os.path.abspath(os.fspath(path)))


def relative_to_dataset(path: Path, root: Path) -> Path:
    """A dataset file's path inside the dataset, by the path it was found at (links not followed).

    The dataset folder itself may be reached through a link: its resolved path is tried too, and a
    file found elsewhere keeps its name in a folder of its own (never a path outside OUT_DIR).
    """
    for base in (absolute(root), Path(os.path.realpath(root))):
        try:
            return path.relative_to(base)
        except ValueError:
            continue
    parent_real = Path(os.path.realpath(path.parent)) / path.name
    try:
        return parent_real.relative_to(Path(os.path.realpath(root)))
    except ValueError:
        return Path(path.name)


def is_dangling(path: Path) -> bool:
    """A symbolic link whose target is missing (an annexed file not fetched yet)."""
    return path.is_symlink() and not path.exists()


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
        path = absolute(f.path)  # the link's own path: a DataLad file's name, not its annex key
        rel = relative_to_dataset(path, bids_dir)
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
        literal = os.path.lexists(pattern)  # "scan [1].nii.gz" is a file's name, not a pattern
        found = [pattern] if literal or not glob.has_magic(pattern) else sorted(glob.glob(pattern, recursive=True))
        if not found:
            raise CohortError(f"no file matches {pattern!r}")
        for name in found:
            path = Path(name)
            if is_dangling(path):  # a link to a file not fetched yet: an input that fails, not a refusal
                paths.append(absolute(path))
                continue
            if not path.exists():
                raise CohortError(f"no file {name}")
            if not path.is_file():
                raise CohortError(f"{name} is not a file")
            paths.append(absolute(path))
    inputs = [Input(path=path, entities=dict(entities_of(path.name)[0])) for path in dict.fromkeys(paths)]
    check_distinct_outputs(inputs)
    return inputs


def check_distinct_outputs(inputs: list[Input], out_dir: str | os.PathLike = ".") -> None:
    """CohortError when two inputs would write the same output files (one would overwrite the other)."""
    seen: dict[Path, Input] = {}
    for item in inputs:
        key = item.outputs(out_dir, "m").heatmap
        if key in seen:
            raise CohortError(f"{seen[key].label} and {item.label} would write the same outputs "
                              f"({key.name.replace('desc-m', 'desc-<method>')}); rename one or run them into "
                              "different output folders")
        seen[key] = item
