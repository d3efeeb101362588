"""The time course of a series explanation: one row per timepoint, computed one way for all.

For each timepoint of a 4D explanation (time first) the table holds what the model decided and
where its map was:

- ``timepoint``, ``time_s`` (timepoint x TR, seconds from the start of the run, as BIDS event
  onsets count them);
- ``predicted`` (class index), ``predicted_name`` (when the class names are known) and
  ``probability`` (of the predicted class);
- ``heat_in_region`` (mean heat over the voxels where the labels are > 0), or, without labels,
  ``heat_peak`` (the map's maximum);
- ``design`` (1 while any task event of a BIDS ``events.tsv`` is running at the timepoint's
  onset, else 0), when events are given.

``curves`` does the arithmetic on arrays; ``time_courses`` takes an ``Explanation``;
``layer_time_courses`` takes a napari heat layer made by the explain widget (and optionally a
Labels layer on any grid in the same world space). The dock widget, scripts and batch runs all
end in ``curves``. This module imports neither Qt nor napari.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

HEAT_IN_REGION = "heat_in_region"
HEAT_PEAK = "heat_peak"
#: BIDS writes missing values as "n/a"
MISSING = "n/a"
#: entities a preprocessed BOLD file adds to its raw name (its events keep the raw name)
_DERIVED_ENTITIES = ("space", "res", "den", "desc")

EventRows = Sequence[dict]


# -- the table ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TimeCourses:
    """Per-timepoint curves of a series explanation; every array has length T.

    heat_column:  ``"heat_in_region"`` (mean over labels > 0) or ``"heat_peak"`` (no labels).
    region_voxels: voxels of the heat grid inside the region (None without labels).
    design:       the task boxcar at each timepoint's onset (None without events).
    events:       the event rows the design was made from.
    """

    timepoint: np.ndarray  # (T,) int
    time_s: np.ndarray  # (T,) float, timepoint * tr
    predicted: np.ndarray  # (T,) int
    probability: np.ndarray  # (T,) float, of the predicted class
    heat: np.ndarray  # (T,) float
    heat_column: str = HEAT_PEAK
    design: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None
    tr: float = 1.0
    region_voxels: int | None = None
    events: tuple[dict, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.timepoint)

    @property
    def predicted_name(self) -> list[str] | None:
        if self.class_names is None:
            return None
        return [self.class_names[int(k)] for k in self.predicted]

    def columns(self) -> dict[str, list]:
        """Column name -> one value per timepoint, in the order a table shows them."""
        out: dict[str, list] = {
            "timepoint": [int(t) for t in self.timepoint],
            "time_s": [float(s) for s in self.time_s],
            "predicted": [int(k) for k in self.predicted],
        }
        if self.class_names is not None:
            out["predicted_name"] = self.predicted_name
        out["probability"] = [float(p) for p in self.probability]
        out[self.heat_column] = [float(h) for h in self.heat]
        if self.design is not None:
            out["design"] = [int(d) for d in self.design]
        return out

    def rows(self) -> list[dict]:
        """One dict per timepoint (the table's rows)."""
        columns = self.columns()
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    def nearest(self, seconds: float) -> int:
        """Index of the timepoint whose time is nearest to ``seconds`` (ties: the earlier one)."""
        if not len(self):
            raise ValueError("the time course has no timepoints")
        return int(np.argmin(np.abs(self.time_s - float(seconds))))


# -- the arithmetic -------------------------------------------------------------------------------------------

def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """The predicted class per timepoint: argmax, or for a single sigmoid output p >= 0.5. (T, K) -> (T,)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[-1] == 1:
        return (probabilities[:, 0] >= 0.5).astype(np.int64)
    return np.argmax(probabilities, axis=-1).astype(np.int64)


def predicted_probability(probabilities: np.ndarray) -> np.ndarray:
    """The probability of each timepoint's predicted class. (T, K) -> (T,)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = predicted_classes(probabilities)
    if probabilities.shape[-1] == 1:  # a single sigmoid: p for class 1, 1 - p for class 0
        p = probabilities[:, 0]
        return np.where(predicted == 1, p, 1.0 - p)
    return probabilities[np.arange(len(probabilities)), predicted]


def design_at(times: np.ndarray, events: EventRows) -> np.ndarray:
    """The task boxcar: 1 where a time lies in any event's [onset, onset + duration), else 0. (T,) -> (T,)."""
    times = np.asarray(times, dtype=np.float64)
    inside = np.zeros(times.shape, dtype=bool)
    for row in events:
        onset, duration = float(row["onset"]), float(row["duration"])
        inside |= (times >= onset) & (times < onset + duration)
    return inside.astype(np.int64)


def region_heat(heatmap: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, str, int | None]:
    """(heat per timepoint (T,), its column name, region voxels) of maps (T, D, H, W).

    labels: (D, H, W) on the maps' voxels; the region is where they are > 0: its mean heat.
    None: each map's peak. Used on a whole series or on one chunk of it at a time.
    """
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 4:
        raise ValueError(f"a time course needs a series of maps (T, D, H, W); this one is {heatmap.ndim}D")
    flat = heatmap.reshape(heatmap.shape[0], -1)
    if labels is None:
        return flat.max(axis=1).astype(np.float64), HEAT_PEAK, None
    labels = np.asarray(labels)
    if labels.shape != heatmap.shape[1:]:
        raise ValueError(f"the labels ({'x'.join(map(str, labels.shape))}) are not on the maps' voxels "
                         f"({'x'.join(map(str, heatmap.shape[1:]))})")
    inside = labels.reshape(-1) > 0
    voxels = int(inside.sum())
    if not voxels:
        raise ValueError("the region is empty: no label is above 0 on the heatmap's voxels")
    return flat[:, inside].mean(axis=1, dtype=np.float64), HEAT_IN_REGION, voxels


def curves(heatmap: np.ndarray, probabilities: np.ndarray, labels: np.ndarray | None = None,
           tr: float = 1.0, events: EventRows | str | os.PathLike | None = None,
           class_names: Sequence[str] | None = None) -> TimeCourses:
    """The time courses of a series' maps and probabilities.

    heatmap: (T, D, H, W); probabilities: (T, K); labels: (D, H, W) on the heatmap's voxels, the
    region is where they are > 0 (None: the map's peak instead); tr: seconds per timepoint;
    events: BIDS event rows, or the path of an ``events.tsv``.
    """
    heat, column, voxels = region_heat(heatmap, labels)
    return from_heat(heat, probabilities, column, tr=tr, events=events, class_names=class_names, voxels=voxels)


def from_heat(heat: np.ndarray, probabilities: np.ndarray, column: str = HEAT_PEAK, tr: float = 1.0,
              events: EventRows | str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
              voxels: int | None = None) -> TimeCourses:
    """The time courses from heat values already computed by ``region_heat`` (e.g. chunk by chunk).

    heat: (T,); probabilities: (T, K); column: ``heat_in_region`` or ``heat_peak``.
    """
    heat = np.asarray(heat, dtype=np.float64)
    probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    count = len(heat)
    if probabilities.shape[0] != count:
        raise ValueError(f"{probabilities.shape[0]} rows of probabilities for {count} timepoints")
    if not (np.isfinite(tr) and tr > 0):
        raise ValueError(f"the repetition time must be a positive number of seconds, not {tr}")
    timepoint = np.arange(count)
    time_s = timepoint * float(tr)
    rows: tuple[dict, ...] = ()
    design = None
    if events is not None:
        rows = tuple(read_events(events) if isinstance(events, (str, os.PathLike)) else events)
        design = design_at(time_s, rows)
    names = tuple(class_names) if class_names else None
    if names is not None and len(names) < max(probabilities.shape[1], 2 if probabilities.shape[1] == 1 else 0):
        names = None  # names that do not cover every class would mislabel some
    return TimeCourses(timepoint=timepoint, time_s=time_s, predicted=predicted_classes(probabilities),
                       probability=predicted_probability(probabilities), heat=heat, heat_column=column,
                       design=design, class_names=names, tr=float(tr), region_voxels=voxels, events=rows)


def time_courses(explanation, labels: np.ndarray | None = None, tr: float = 1.0,
                 events: EventRows | str | os.PathLike | None = None,
                 class_names: Sequence[str] | None = None) -> TimeCourses:
    """The time courses of a series ``Explanation`` (heatmap (T, D, H, W), probabilities (T, K)).

    labels: (D, H, W) on the heatmap's voxels (None: the map's peak); tr: seconds per timepoint;
    events: BIDS event rows or an ``events.tsv`` path; class_names: the model's, for
    ``predicted_name``.
    """
    return curves(explanation.heatmap, explanation.probabilities, labels=labels, tr=tr, events=events,
                  class_names=class_names)


def layer_time_courses(layer, labels_layer=None, events: EventRows | str | os.PathLike | bool | None = None
                       ) -> TimeCourses:
    """The time courses of a heat layer made by explaining every timepoint of a 4D layer.

    layer: a napari Image layer, data (T, D, H, W), with the ``metadata["g3dvit"]`` record of a
    series run; labels_layer: a 3D Labels layer on any grid in the same world space (None: the
    map's peak); events: rows, an ``events.tsv`` path, None for the one beside the source NIfTI
    file (if there is one), or False for none. The TR is the layer's time scale.
    """
    from .runner import RESULT_KEY, data_to_world_matrix, labels_on_grid, spatial_matrix

    record = layer.metadata.get(RESULT_KEY) or {}
    if not record.get("series"):
        raise ValueError(f"'{layer.name}' is not the heatmap of a whole series; explain all timepoints "
                         "of a 4D volume first")
    heat = np.asarray(layer.data)
    labels = None
    if labels_layer is not None:
        labels = np.asarray(labels_layer.data)
        if labels.ndim != 3:
            raise ValueError(f"the labels layer '{labels_layer.name}' is {labels.ndim}D; pick a 3D Labels layer")
        heat_to_world = spatial_matrix(data_to_world_matrix(layer))
        labels_to_world = spatial_matrix(data_to_world_matrix(labels_layer))
        if labels.shape != heat.shape[1:] or not np.allclose(labels_to_world, heat_to_world):
            labels = labels_on_grid(labels, labels_to_world, heat.shape[1:], heat_to_world)
        if not (labels > 0).any():
            raise ValueError(f"the labels of '{labels_layer.name}' do not overlap the heatmap in world "
                             "coordinates; are they in the same space as the volume?")
    if events is None:
        found = events_beside(source_path(layer.metadata))
        events = found if found is not None else False
    return curves(heat, record.get("probabilities"), labels=labels, tr=float(layer.scale[0]),
                  events=None if events is False else events, class_names=record.get("class_names"))


# -- files --------------------------------------------------------------------------------------------------

def source_path(metadata: dict) -> Path | None:
    """The NIfTI file a layer (or the volume its heatmap explains) was read from, if known."""
    path = (metadata.get("nifti") or {}).get("path")
    return Path(path) if path else None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_bids_bold(path: str | os.PathLike | None) -> bool:
    """Whether a NIfTI file is named as a BIDS BOLD run (``..._bold.nii[.gz]``)."""
    return path is not None and _stem(Path(path)).endswith("_bold")


def events_beside(nifti_path: str | os.PathLike | None) -> Path | None:
    """The ``events.tsv`` that goes with a NIfTI series, in the same folder, if there is one.

    Looked for, in order: ``<name>_events.tsv`` for ``<name>.nii[.gz]``; the BIDS name with the
    suffix replaced (``sub-01_task-x_run-1_bold.nii.gz`` -> ``sub-01_task-x_run-1_events.tsv``);
    the same without the entities preprocessing adds (space, res, den, desc).
    """
    if nifti_path is None:
        return None
    path = Path(nifti_path)
    stem = _stem(path)
    names = [f"{stem}_events.tsv"]
    parts = stem.split("_")
    if len(parts) > 1 and "-" not in parts[-1]:  # a BIDS suffix (bold, cbv, ...) after the entities
        entities = parts[:-1]
        names.append("_".join(entities) + "_events.tsv")
        raw = [e for e in entities if e.split("-", 1)[0] not in _DERIVED_ENTITIES]
        if raw and raw != entities:
            names.append("_".join(raw) + "_events.tsv")
    for name in names:
        candidate = path.with_name(name)
        if candidate.is_file():
            return candidate
    return None


def _number(text: str, column: str, line: int, path: Path) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path.name}, line {line}: the {column} '{text}' is not a number of seconds") from None
    if not np.isfinite(value):
        raise ValueError(f"{path.name}, line {line}: the {column} '{text}' is not a number of seconds")
    return value


def read_events(path: str | os.PathLike) -> list[dict]:
    """The rows of a BIDS ``events.tsv``: ``onset`` and ``duration`` as seconds, other columns as text.

    ``trial_type`` is optional (None when the file has no such column). A duration of ``n/a``
    counts as 0 (an instant, which covers no timepoint of the boxcar).
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path.name} is empty: an events file needs a header line with onset and duration")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    header = [name.strip() for name in (reader.fieldnames or [])]
    missing = [name for name in ("onset", "duration") if name not in header]
    if missing:
        raise ValueError(f"{path.name} has no {' and no '.join(missing)} column; a BIDS events file is "
                         f"tab-separated with the columns onset and duration (its header reads: "
                         f"{', '.join(header) or 'nothing'})")
    rows = []
    for line, raw in enumerate(reader, start=2):
        row = {(key or "").strip(): (value or "").strip() for key, value in raw.items() if key is not None}
        if not any(row.values()):
            continue  # a blank line
        onset = _number(row["onset"], "onset", line, path)
        duration = 0.0 if row["duration"] in (MISSING, "") else _number(row["duration"], "duration", line, path)
        if duration < 0:
            raise ValueError(f"{path.name}, line {line}: the duration {duration:g} is negative")
        trial = row.get("trial_type")
        rows.append({**row, "onset": onset, "duration": duration,
                     "trial_type": None if trial in (None, "", MISSING) else trial})
    return rows


def default_table_path(source: str | os.PathLike | None, volume: str = "series") -> Path:
    """Where a time course is written unless the user says otherwise: beside its source file.

    A BIDS BOLD run gets a TSV named with the run's entities
    (``sub-01_task-x_run-1_desc-g3dvit_timeseries.tsv``); other files a CSV
    (``<name>_timecourse.csv``); a volume without a file, or one inside the installed package (a
    shipped sample), a CSV in the home folder.
    """
    from .outputs import user_folder

    if source is None:
        return Path.home() / f"{_safe(volume)}_timecourse.csv"
    source = Path(source)
    folder = user_folder(source)
    stem = _stem(source)
    if is_bids_bold(source):
        return folder / (stem[: -len("_bold")] + "_desc-g3dvit_timeseries.tsv")
    return folder / f"{stem}_timecourse.csv"


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "series"


def write_table(courses: TimeCourses, path: str | os.PathLike, about: dict | None = None) -> str:
    """Write the curves as CSV, or TSV when ``path`` ends with .tsv; whole or not at all. Returns the path.

    about: what the curves came from (heatmap, method, layer, class, labels): ``# key: value``
    lines at the top of a CSV, a JSON sidecar of the same name beside a TSV (BIDS tables have no
    comments).
    """
    import json

    from .atomic import write_together
    from .outputs import sidecar_of

    path = Path(path)
    tsv = path.name.lower().endswith(".tsv")
    files = [(path, table_writer(courses, "\t" if tsv else ",", about=None if tsv else about))]
    if about and tsv:
        files.append((sidecar_of(path), lambda tmp: tmp.write_text(json.dumps(about, indent=2) + "\n")))
    write_together(files)
    return str(path)


def table_writer(courses: TimeCourses, delimiter: str = "\t", leave_out: Sequence[str] = (),
                 about: dict | None = None):
    """A writer (``atomic.stage``) of the curves as a table, without the columns ``leave_out`` names;
    ``about`` becomes ``# key: value`` lines above the header."""
    columns = {name: values for name, values in courses.columns().items() if name not in leave_out}

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            if about:
                fh.writelines(f"# {key}: {' '.join(str(value).split())}\n" for key, value in about.items())
            writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(zip(*columns.values()))

    return write


def read_table(path: str | os.PathLike) -> dict[str, list[str]]:
    """A written time course back as column -> values (text), for checks and scripts."""
    path = Path(path)
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader((line for line in fh if not line.startswith("# ")), delimiter=delimiter))
    header, body = rows[0], rows[1:]
    return {name: [row[i] for row in body] for i, name in enumerate(header)}
