"""Where a table the user exports goes, and how it is written: whole, and saying what it holds.

- ``user_folder(source)``: beside the data the user opened, else the home folder; never inside
  the installed package (the shipped samples live there) or a folder that cannot be written.
- ``write_rows(path, rows, columns, about)``: CSV, or TSV when the name ends with ``.tsv``, written
  atomically. ``about`` (what the numbers came from) is written as ``# key: value`` lines at the
  top of a CSV (``pandas.read_csv(path, comment="#")`` skips them), and for a TSV (a BIDS-style
  table, which has no comments) as a JSON sidecar of the same name.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _package_folders() -> list[Path]:
    here = Path(__file__).resolve().parent
    folders = [here]
    try:
        from . import sample_models

        folders.append(Path(sample_models.__file__).resolve().parent)
    except Exception:  # noqa: BLE001 - a broken install must not stop a table being written
        pass
    return folders


def is_in_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies inside the installed package or its samples' folder."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved == folder or folder in resolved.parents for folder in _package_folders())


def user_folder(source: str | os.PathLike | None) -> Path:
    """The folder a table about ``source`` is written to unless the user says otherwise."""
    if source:
        folder = Path(source).expanduser().resolve().parent
        if folder.is_dir() and not is_in_package(folder) and os.access(folder, os.W_OK):
            return folder
    return Path.home()


def safe_name(text: str) -> str:
    """``text`` as part of a file name (letters, digits, ``-``, ``_`` and ``.``)."""
    import re

    return re.sub(r"[^\w.-]+", "_", str(text)).strip("_") or "table"


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name[: -len(path.suffix)] + ".json")


def _cell(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "n/a" if value is None else value


def write_rows(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str],
               about: dict | None = None) -> str:
    """Write ``rows`` (dicts keyed by ``columns``); returns the path. Whole or not at all."""
    from .atomic import write_together

    path = Path(path).expanduser()
    tsv = path.name.lower().endswith(".tsv")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            if about and not tsv:
                for key, value in about.items():
                    fh.write(f"# {key}: {' '.join(str(value).split())}\n")
            writer = csv.DictWriter(fh, fieldnames=list(columns), delimiter="\t" if tsv else ",",
                                    extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)

    files = [(path, write)]
    if about and tsv:
        files.append((sidecar_of(path), lambda tmp: tmp.write_text(json.dumps(about, indent=2) + "\n")))
    write_together(files)
    return str(path)


def read_rows(path: str | os.PathLike) -> tuple[dict[str, str], list[dict[str, str]]]:
    """``(about, rows)`` of a table written by ``write_rows`` (rows as text)."""
    path = Path(path)
    tsv = path.name.lower().endswith(".tsv")
    about: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    body = []
    for line in lines:
        if line.startswith("# ") and not body:
            key, _, value = line[2:].partition(": ")
            about[key] = value
        else:
            body.append(line)
    if tsv and sidecar_of(path).is_file():
        about = json.loads(sidecar_of(path).read_text())
    rows = list(csv.DictReader(body, delimiter="\t" if tsv else ","))
    return about, rows


def json_default(value):
    """What ``json.dumps(default=...)`` makes of numpy scalars and arrays and of paths; TypeError
    for anything else."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")
