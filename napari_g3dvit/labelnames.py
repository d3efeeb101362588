"""Names and colours of label values, from the lookup tables neuroimaging atlases come with.

Three formats are read (none of them can run code):

- BIDS ``dseg.tsv``: tab-separated, columns ``index`` and ``name``, optionally ``abbreviation``,
  ``color`` (``#rrggbb``) and ``mapping``. Found beside a label volume as ``<stem>.tsv`` for a BIDS
  ``..._dseg.nii.gz``, or ``<stem>_dseg.tsv``, or as the dataset's ``dseg.tsv`` in its folder or a
  folder above it, up to the dataset's root (the folder with ``dataset_description.json``).
- FreeSurfer colour lookup tables (``FreeSurferColorLUT.txt`` format): rows ``No. Label-Name R G B A``
  with colours 0-255 and ``#`` comments. The A column is 0 throughout FreeSurfer's own files: it is
  not an opacity and is ignored.
- FSL atlas XML: ``<label index="i" x=".." y=".." z="..">Name</label>``. In a *probabilistic* atlas
  the index numbers the volumes of the 4D probability image, and its summary (max-probability)
  image stores ``index + 1`` in each voxel (0 is background); in a *label* atlas the voxel value
  is the index itself. Which one applies is decided, in order, by the atlas ``<type>``, by the
  file the names are for (the XML names its summary and label images), and, when neither says, by
  which reading names more of the values present; ``LabelNames.note`` says which was used.

``LabelNames`` turns into a napari ``features`` table (with the ``index`` column napari's status
bar looks labels up by), a colour dictionary for ``DirectLabelColormap``, and names for tables.
This module imports neither Qt nor napari (``attach`` imports napari when called).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

#: metadata key of a Labels layer whose names were attached, with where they came from
METADATA_KEY = "label_names"
#: larger lookup files are not a label table
MAX_TABLE_BYTES = 20_000_000

RGBA = tuple[float, float, float, float]


class LabelNamesError(ValueError):
    """A lookup table that cannot be read: the message says which file and what is wrong."""


@dataclass(frozen=True)
class LabelNames:
    """Names (and optionally colours) of the integer values of a label volume.

    names: voxel value -> name; colors: voxel value -> RGBA in 0..1 (empty when the table has
    none); kind: "bids-dseg", "freesurfer-lut" or "fsl-xml"; note: how values were read.
    """

    names: dict[int, str]
    colors: dict[int, RGBA] = field(default_factory=dict)
    abbreviations: dict[int, str] = field(default_factory=dict)
    source: str = ""
    kind: str = ""
    note: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def name_of(self, value) -> str:
        """The name of ``value``, else the number as text."""
        return self.names.get(int(value), str(int(value)))

    def features(self) -> dict[str, list]:
        """A napari features table: ``index`` (the voxel value) and ``name``, background included."""
        values = sorted(self.names)
        return {"index": values, "name": [self.names[v] for v in values]}

    def color_dict(self) -> dict:
        """Colours for napari's ``DirectLabelColormap``: value -> RGBA, 0 and unlisted values transparent."""
        out: dict = {None: (0.0, 0.0, 0.0, 0.0)}
        out.update({value: rgba for value, rgba in self.colors.items() if value != 0})
        out[0] = (0.0, 0.0, 0.0, 0.0)
        return out

    def describe(self) -> str:
        """One line: how many names, from which file, and how they were read."""
        text = f"{len(self)} names from {Path(self.source).name or 'a table'}"
        return f"{text} ({self.note})" if self.note else text


# -- reading ----------------------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_TABLE_BYTES:
            raise LabelNamesError(f"{path.name} is {size // 1_000_000} MB; a label table is far smaller")
        return path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        raise LabelNamesError(f"{path.name} cannot be read: {err.strerror or err}") from err


def _integer(text: str, what: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise LabelNamesError(f"{where}: the {what} '{text}' is not a whole number") from None
    if not value.is_integer():
        raise LabelNamesError(f"{where}: the {what} '{text}' is not a whole number")
    return int(value)


def _hex_colour(text: str, where: str) -> RGBA | None:
    text = text.strip()
    if text in ("", "n/a"):
        return None
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})([0-9a-fA-F]{2})?", text)
    if not match:
        raise LabelNamesError(f"{where}: the color '{text}' is not #rrggbb")
    rgb = [int(match.group(1)[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    return (*rgb, 1.0)


def read_bids_dseg(path: str | os.PathLike) -> LabelNames:
    """A BIDS ``dseg.tsv``: columns ``index`` and ``name`` (``abbreviation``, ``color`` optional)."""
    path = Path(path)
    text = _read_text(path)
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    header = [(name or "").strip() for name in reader.fieldnames or []]
    if "index" not in header or "name" not in header:
        raise LabelNamesError(f"{path.name} is not a BIDS segmentation table: it needs tab-separated columns "
                              f"index and name (its header reads: {', '.join(header) or 'nothing'})")
    names, colors, abbreviations = {}, {}, {}
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        where = f"{path.name}, line {line}"
        value = _integer(row["index"], "index", where)
        names[value] = row["name"] or str(value)
        if row.get("abbreviation") not in (None, "", "n/a"):
            abbreviations[value] = row["abbreviation"]
        colour = _hex_colour(row.get("color", ""), where)
        if colour is not None:
            colors[value] = colour
    if not names:
        raise LabelNamesError(f"{path.name} lists no labels")
    return LabelNames(names, colors, abbreviations, source=str(path), kind="bids-dseg",
                      note="BIDS dseg.tsv: voxel value = index")


def read_freesurfer_lut(path: str | os.PathLike) -> LabelNames:
    """A FreeSurfer colour lookup table: ``No. Label-Name R G B A`` rows (A ignored)."""
    path = Path(path)
    names, colors = {}, {}
    for line, raw in enumerate(_read_text(path).splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        where = f"{path.name}, line {line}"
        if len(parts) < 5:
            raise LabelNamesError(f"{where}: expected 'No. Label-Name R G B A', got '{raw.strip()}'")
        value = _integer(parts[0], "label number", where)
        rgb = [_integer(p, "colour value", where) for p in parts[2:5]]
        if any(not 0 <= c <= 255 for c in rgb):
            raise LabelNamesError(f"{where}: colour values run from 0 to 255, got {' '.join(parts[2:5])}")
        names[value] = parts[1]
        colors[value] = (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, 1.0)
    if not names:
        raise LabelNamesError(f"{path.name} lists no labels")
    return LabelNames(names, colors, source=str(path), kind="freesurfer-lut",
                      note="FreeSurfer lookup table: voxel value = No.; its A column is not used")


@dataclass(frozen=True)
class FslAtlas:
    """What an FSL atlas XML says: type, image names, and index -> name."""

    type: str  # "probabilistic", "label" or "" when not said
    images: tuple[str, ...]  # the 4D probability image (probabilistic) or the label image
    summaries: tuple[str, ...]  # max-probability summary images
    labels: dict[int, str]


def read_fsl_atlas(path: str | os.PathLike) -> FslAtlas:
    """Parse an FSL atlas XML (no entities, no DTDs: an untrusted file can only be read)."""
    import xml.etree.ElementTree as ET

    path = Path(path)
    text = _read_text(path)
    if re.search(r"<!(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise LabelNamesError(f"{path.name} declares a DTD or entities; FSL atlas files have none")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise LabelNamesError(f"{path.name} is not readable XML ({err})") from None
    labels = {}
    for element in root.iter("label"):
        if "index" not in element.attrib:
            raise LabelNamesError(f"{path.name}: a <label> has no index attribute")
        labels[_integer(element.attrib["index"], "label index", path.name)] = (element.text or "").strip()
    if not labels:
        raise LabelNamesError(f"{path.name} holds no <label index=...>Name</label> entries; is it an FSL atlas?")
    kind = (root.findtext("header/type") or "").strip().lower()
    kind = "probabilistic" if kind.startswith("prob") else ("label" if kind in ("label", "deterministic") else "")
    images = tuple((e.text or "").strip() for e in root.iter("imagefile"))
    summaries = tuple((e.text or "").strip() for e in root.iter("summaryimagefile"))
    return FslAtlas(kind, images, summaries, labels)


def _stem(path: str | os.PathLike) -> str:
    name = Path(str(path).replace("\\", "/")).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_fsl_xml(path: str | os.PathLike, image: str | os.PathLike | None = None,
                 values: Iterable[int] | None = None, offset: int | None = None) -> LabelNames:
    """Names of an FSL atlas for its label or summary image.

    image: the label volume the names are for (its file name is matched against the XML's image
    names); values: the values present in it; offset: force the voxel value = index + offset.
    """
    path = Path(path)
    atlas = read_fsl_atlas(path)
    why = "as asked"
    if offset is None and atlas.type:  # FSL's rule: a probabilistic atlas' summary image holds index + 1
        offset = 1 if atlas.type == "probabilistic" else 0
        why = f"a {atlas.type} atlas"
    if offset is None and image is not None:
        stem = _stem(image)
        if any(_stem(s) == stem for s in atlas.summaries):
            offset, why = 1, f"{stem} is this atlas' summary image"
        elif any(_stem(s) == stem for s in atlas.images):
            offset, why = 0, f"{stem} is this atlas' label image"
    if offset is None:
        present = {int(v) for v in values or ()} - {0}
        named = {k: len(present & {i + k for i in atlas.labels}) for k in (1, 0)}
        offset = 1 if named[1] >= named[0] else 0
        why = f"{named[offset]} of the {len(present)} values present are named this way"
    names = {index + offset: name for index, name in atlas.labels.items()}
    rule = "voxel value = index + 1" if offset == 1 else "voxel value = index"
    return LabelNames(names, source=str(path), kind="fsl-xml", note=f"FSL atlas: {rule} ({why})")


def read_label_names(path: str | os.PathLike, image: str | os.PathLike | None = None,
                     values: Iterable[int] | None = None) -> LabelNames:
    """Read any of the three formats, chosen by suffix and content.

    image, values: the label volume the names are for and the values in it (FSL XML only).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelNamesError(f"no label table {path}")
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return read_fsl_xml(path, image=image, values=values)
    if suffix == ".tsv":
        return read_bids_dseg(path)
    head = _read_text(path).lstrip()[:200]
    if head.startswith("<"):
        return read_fsl_xml(path, image=image, values=values)
    if head.split("\n", 1)[0].replace(" ", "").startswith("index\tname"):
        return read_bids_dseg(path)
    return read_freesurfer_lut(path)


# -- finding -----------------------------------------------------------------------------------------------

def _dataset_root(folder: Path, limit: int = 8) -> Path | None:
    for candidate in [folder, *folder.parents][:limit]:
        if (candidate / "dataset_description.json").is_file():
            return candidate
    return None


def find_dseg(nifti_path: str | os.PathLike | None) -> Path | None:
    """The BIDS ``dseg.tsv`` for a label volume, if there is one.

    Looked for, in order: ``<stem>.tsv`` for a ``..._dseg.nii[.gz]`` (the BIDS pairing);
    ``<stem>_dseg.tsv``; ``dseg.tsv`` in its folder, then in each folder above it up to the
    dataset's root (when the file is inside a BIDS dataset).
    """
    if nifti_path is None:
        return None
    path = Path(nifti_path)
    stem = _stem(path)
    candidates = []
    if stem.endswith("_dseg"):
        candidates.append(path.with_name(f"{stem}.tsv"))
    candidates.append(path.with_name(f"{stem}_dseg.tsv"))
    candidates.append(path.with_name("dseg.tsv"))
    root = _dataset_root(path.parent)
    if root is not None:
        folder = path.parent
        while folder != root and root in folder.parents:
            folder = folder.parent
            candidates.append(folder / "dseg.tsv")
    return next((c for c in candidates if c.is_file()), None)


def find_names_beside(atlas_path: str | os.PathLike) -> Path | None:
    """A lookup table for an atlas volume (``g3dvit bids --atlas``), if one is beside it.

    A BIDS ``dseg.tsv`` (see ``find_dseg``); ``<stem>.txt`` or ``<stem>_LUT.txt`` /
    ``FreeSurferColorLUT.txt`` in its folder; an FSL atlas XML in its folder or the one above that
    names this file as its label or summary image.
    """
    path = Path(atlas_path)
    found = find_dseg(path)
    if found is not None:
        return found
    stem = _stem(path)
    for name in (f"{stem}.txt", f"{stem}_LUT.txt", "FreeSurferColorLUT.txt"):
        if (path.parent / name).is_file():
            return path.parent / name
    for folder in (path.parent, path.parent.parent):
        for xml in sorted(folder.glob("*.xml")):
            try:
                atlas = read_fsl_atlas(xml)
            except LabelNamesError:
                continue
            if any(_stem(s) == stem for s in (*atlas.summaries, *atlas.images)):
                return xml
    return None


# -- on napari layers ------------------------------------------------------------------------------------------

def names_of_layer(layer) -> dict[int, str]:
    """value -> name from a Labels layer's ``features`` (columns ``index`` and ``name``); {} if none."""
    features = getattr(layer, "features", None)
    if features is None or "index" not in getattr(features, "columns", ()) or "name" not in features.columns:
        return {}
    return {int(i): str(n) for i, n in zip(features["index"], features["name"])}


def layer_kwargs(names: LabelNames) -> dict:
    """Keyword arguments of a Labels layer (or a reader's layer data tuple) that show ``names``.

    ``colormap`` (only when the table has colours) is a value -> RGBA dictionary, which napari
    turns into a ``DirectLabelColormap``.
    """
    out = {"features": names.features()}
    if names.colors:
        out["colormap"] = names.color_dict()
    return out


def attach(layer, names: LabelNames | str | os.PathLike) -> LabelNames:
    """Give a Labels layer the names (and colours) of a lookup table; returns what was read.

    names: a ``LabelNames`` or a path to a BIDS dseg.tsv, FreeSurfer LUT or FSL atlas XML.
    Afterwards napari's status bar shows the name under the cursor, and region and peak tables
    use the names.
    """
    import numpy as np

    if not isinstance(names, LabelNames):
        source = (getattr(layer, "metadata", {}).get("nifti") or {}).get("path")
        values = np.unique(np.asarray(layer.data)) if np.asarray(layer.data).size < 50_000_000 else None
        names = read_label_names(names, image=source, values=values)
    for key, value in layer_kwargs(names).items():
        setattr(layer, key, value)
    metadata = dict(layer.metadata)
    metadata[METADATA_KEY] = {"source": names.source, "kind": names.kind, "note": names.note}
    layer.metadata = metadata
    return names


#: ``napari_g3dvit.attach_label_names(layer, path)``
attach_label_names = attach
