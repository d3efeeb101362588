"""Group level: one table over every explained volume or timepoint, and mean maps per class.

Reads what the participant level wrote (sidecars, regions tables, error records) into
``OUT_DIR/group/``: ``timepoints.tsv`` (one row per volume or timepoint and method: subject,
session, task, run, timepoint, prediction, ``p_<class>`` per class as the config spells it, heat
per atlas label; failed inputs with their error; a column no row fills is left out), and, when
the maps share one grid, ``desc-<method><Class>_heatmap.nii.gz`` (valid BIDS: the mean map over
the volumes predicted as that class, ``desc-g3dvitTask``) with its JSON sidecar naming the class
exactly, and ``group.json`` saying what went in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .inputs import MAP_SUFFIX, camel, desc_label
from .writing import informative, read_table, write_json, write_map, write_table

GROUP = "group"
ENTITY_COLUMNS = (("sub", "subject"), ("ses", "session"), ("task", "task"), ("run", "run"))


def sidecars(out_dir: Path) -> list[Path]:
    """Every complete output's sidecar under ``out_dir`` (not the group's, not unfinished parts)."""
    return sorted(p for p in out_dir.rglob(f"*_{MAP_SUFFIX}.json")
                  if GROUP not in p.relative_to(out_dir).parts[:1] and not any(s.startswith(".") for s in p.parts))


def class_labels(names: list[str]) -> dict[str, str]:
    """Each class name as an alphanumeric BIDS label part ("task" -> "Task"), distinct from the others."""
    out: dict[str, str] = {}
    for index, name in enumerate(names):
        label = camel(name) or f"Class{index}"
        if label in out.values():
            label = f"{label}{index}"
        out[name] = label
    return out


def group_level(out_dir: str | Path, means: bool = True) -> dict:
    """Write the group table (and mean maps); returns what ``group.json`` records."""
    out_dir = Path(out_dir)
    found = sidecars(out_dir)
    errors = sorted((out_dir / "logs").glob("*_error.json")) if (out_dir / "logs").is_dir() else []
    if not found and not errors:
        raise FileNotFoundError(f"{out_dir} has no outputs of the participant level (no *_{MAP_SUFFIX}.json)")
    rows, class_names, labels = [], [], []
    records = []
    for path in found:
        record = json.loads(path.read_text())
        records.append((path, record))
        for name in record.get("class_names", []):
            if name not in class_names:
                class_names.append(name)
    for path, record in records:
        heat = _region_heat(path.parent / record["regions"]["table"]) if record.get("regions") else {}
        for by_label in heat.values():
            labels.extend(label for label in by_label if label not in labels)
        rows.extend(_rows(path, record, heat, out_dir))
    for path in errors:
        record = json.loads(path.read_text())
        rows.append({**_entities(record.get("entities", {})), "input": record.get("Sources", [record["input"]])[0],
                     "method": record.get("method"), "error": record["error"]})
    probability_columns = [f"p_{n}" for n in class_names]
    columns = ["subject", "session", "task", "run", "input", "method", "timepoint", "time_s", "predicted",
               "predicted_name", *probability_columns, *[f"heat_{label}" for label in labels], "warning", "error"]
    columns = informative(columns, rows, keep=("input", "method"))
    folder = out_dir / GROUP
    folder.mkdir(parents=True, exist_ok=True)
    write_table(folder / "timepoints.tsv", rows, columns)
    summary = {"inputs": len(records), "failed": [json.loads(p.read_text())["input"] for p in errors],
               "rows": len(rows), "table": "timepoints.tsv", "mean_maps": {}}
    if means:
        summary["mean_maps"] = _mean_maps(records, folder)
    write_json(folder / "group.json", summary)
    return summary


def _entities(entities: dict) -> dict:
    return {column: entities.get(key) for key, column in ENTITY_COLUMNS}


def _region_heat(table: Path) -> dict:
    """{timepoint: {label: mean heat}} from a regions table."""
    out: dict = {}
    if table.is_file():
        for row in read_table(table):
            out.setdefault(row["timepoint"], {})[row["label"]] = row["mean_heat"]
    return out


def _rows(path: Path, record: dict, heat: dict, out_dir: Path) -> list[dict]:
    names = record["class_names"]
    tr = record.get("repetition_time")
    series = record.get("timepoints") is not None
    rows = []
    for t, (pred, probs) in enumerate(zip(record["predicted"], record["probabilities"])):
        key = str(t) if series else "n/a"
        row = {**_entities(record.get("entities", {})), "input": record["Sources"][0],
               "method": record["settings"]["method"], "timepoint": t if series else None,
               "time_s": round(t * tr, 6) if series and tr else None,
               "predicted": pred, "predicted_name": record["predicted_name"][t]}
        if len(probs) == len(names):
            row.update({f"p_{n}": p for n, p in zip(names, probs)})
        if record.get("warnings"):
            row["warning"] = "; ".join(record["warnings"])
        row.update({f"heat_{label}": value for label, value in heat.get(key, {}).items()})
        rows.append(row)
    return rows


def _mean_maps(records: list[tuple[Path, dict]], folder: Path) -> dict:
    """Mean map per method and predicted class, when every map of the method shares one grid."""
    import nibabel as nib

    made = {}
    by_method: dict[str, list[tuple[Path, dict]]] = {}
    for path, record in records:
        by_method.setdefault(record["settings"]["method"], []).append((path, record))
    for method, group in by_method.items():
        maps = [path.with_name(path.name[: -len(".json")] + ".nii.gz") for path, _ in group]
        images = [nib.load(str(m)) for m in maps]
        grid, affine = images[0].shape[:3], images[0].affine
        if any(img.shape[:3] != grid or not np.allclose(img.affine, affine, atol=1e-4) for img in images):
            made[method] = "not made: the maps are on different grids"
            continue
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for img, (_, record) in zip(images, group):
            for t, frame in _frames(img):
                pred = record["predicted"][t]
                sums[pred] = sums.get(pred, 0.0) + frame
                counts[pred] = counts.get(pred, 0) + 1
        names = group[0][1]["class_names"]
        labels = class_labels([names[p] if p < len(names) else str(p) for p in sorted(sums)])
        made[method] = {}
        for pred in sorted(sums):
            name = names[pred] if pred < len(names) else str(pred)
            stem = f"desc-{desc_label(method)}{labels[name]}_{MAP_SUFFIX}"
            target = folder / f"{stem}.nii.gz"
            write_map(target, images[0], tuple(grid), [sums[pred] / counts[pred]])
            write_json(folder / f"{stem}.json", {
                "Description": f"Mean {method} map over the {counts[pred]} volume(s) the model predicted as "
                               f"{name!r}", "class_name": name, "method": method, "volumes": counts[pred],
                "Sources": [record["Sources"][0] for _, record in group]})
            made[method][name] = {"file": target.name, "volumes": counts[pred]}
    return made


def _frames(image, block: int = 32):
    """(t, frame (X, Y, Z) float64) of a 3D or 4D map, read a block of timepoints at a time."""
    if image.ndim == 3:
        yield 0, np.asarray(image.dataobj, dtype=np.float64)
        return
    for t0 in range(0, image.shape[3], block):
        data = np.asarray(image.dataobj[..., t0 : t0 + block], dtype=np.float64)
        for i in range(data.shape[3]):
            yield t0 + i, data[..., i]
