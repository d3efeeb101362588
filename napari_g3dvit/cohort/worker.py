"""The work a cohort run sends to each worker: read a chunk of timepoints lazily, explain it, write.

Tasks never raise for a bad input: they return ``{"error": message}`` so that the run goes on
and the input is recorded as failed (a worker that dies is Dask's to retry). The model is loaded
once per worker process and kept (``loaded_model``). A chunk of a long run is kept as a part
file until every chunk is done; ``finish`` then streams the parts into one map, writes the
regions table, and writes the sidecar last, so a sidecar means a complete output.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..peaktable import DEFAULT_MIN_VOXELS
from ..registry import AUTO
from ..timecourse import region_heat
from .jobs import Job, ModelRef
from .writing import json_default, write_json, write_map, write_table

PEAK_COLUMNS = ("timepoint", "cluster", "x_mm", "y_mm", "z_mm", "peak_heat", "voxels", "volume_mm3", "mean_heat",
                "label")
REGION_COLUMNS = ("timepoint", "index", "label", "voxels", "mean_heat", "peak_heat", "share_of_heat")

_models: dict[tuple[str, str], object] = {}  # one loaded model per worker process
_atlases: dict[tuple, np.ndarray] = {}
model_loads = 0  # how often this process loaded a model (tests check it is once)


def loaded_model(ref: ModelRef, threads: int | None = None):
    """The ``runner.LoadedModel`` for ``ref``, loaded on first use in this process; (model, seconds).

    threads: torch's intra-op threads for the calling task. Set on every call: Dask runs tasks in
    pool threads that start with one OpenMP thread each, whatever the process was given.
    """
    global model_loads
    import torch

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    key = (ref.path, ref.sha256)
    if key in _models:
        return _models[key], 0.0
    from ..runner import open_model

    start = time.perf_counter()
    loaded = open_model(ref.path, ref.config)
    _models.clear()  # one model per worker: a new model replaces the old one
    _models[key] = loaded
    model_loads += 1
    return loaded, time.perf_counter() - start


def open_source(path: Path, keep_open: bool = False):
    """The input's nibabel image (data not read yet); a clear error for what is not a 3D/4D NIfTI.

    keep_open: keep the file (and its decompressor) open between reads, for reading a run's
    chunks in order: gzip cannot seek, so reopening for each chunk would decompress the run from
    its start every time.
    """
    import nibabel as nib

    from ..errors import NiftiError

    try:
        image = nib.load(str(path), keep_file_open=keep_open)
    except Exception as err:
        raise NiftiError(f"{path.name} is not a readable NIfTI file ({err})") from err
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"{path.name} is a {type(image).__name__}, not a NIfTI volume")
    shape = spatial_and_time(image.shape)
    if shape is None:
        raise NiftiError(f"{path.name} has shape {image.shape}; napari-g3dvit explains 3D volumes and 4D series")
    return image


def spatial_and_time(shape: tuple[int, ...]) -> tuple[tuple[int, int, int], int | None] | None:
    """((X, Y, Z), T or None) of a NIfTI shape; None when it is neither 3D nor 4D."""
    if len(shape) == 5 and shape[3] == 1:  # (x, y, z, 1, t)
        return tuple(shape[:3]), shape[4]
    if len(shape) == 4:
        return tuple(shape[:3]), shape[3]
    if len(shape) == 3:
        return tuple(shape), None
    return None


_reading_now: dict[tuple, object] = {}  # the run this worker reads, kept open between its chunks


def _reading(path: Path):
    """The input opened for chunked reading, reused by this worker's next chunk of the same run."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _reading_now:
        _reading_now.clear()  # the previous run's file closes with its image
        _reading_now[key] = open_source(path, keep_open=True)
    return _reading_now[key]


def stored_codes(image) -> str:
    """How the file's voxel axes run, e.g. "LAS" (the array as read is in this orientation)."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(image.affine))


def read_volumes(image, t0: int, t1: int) -> np.ndarray:
    """Timepoints ``t0:t1`` as float32 (C, X, Y, Z) in stored voxel order; (X, Y, Z) for a 3D file.

    Only those timepoints are read (nibabel's array proxy), never the whole run.
    """
    from ..errors import NiftiError

    (_, time_len) = spatial_and_time(image.shape)
    try:
        if time_len is None:
            data = np.asarray(image.dataobj, dtype=np.float32)
        elif len(image.shape) == 5:
            data = np.moveaxis(np.asarray(image.dataobj[:, :, :, 0, t0:t1], dtype=np.float32), -1, 0)
        else:
            data = np.moveaxis(np.asarray(image.dataobj[..., t0:t1], dtype=np.float32), -1, 0)
    except Exception as err:  # truncated or corrupt data: nibabel and zlib raise many types
        raise NiftiError(f"{Path(image.get_filename() or '?').name}: its data could not be read "
                         f"({type(err).__name__}: {err}); the file may be truncated") from err
    return np.ascontiguousarray(data)


_atlas_names: dict[tuple, dict] = {}


def atlas_names(settings) -> dict[int, str] | None:
    """value -> name of the atlas' labels from its lookup table (``settings.atlas_names``), cached."""
    if not settings.atlas_names:
        return None
    key = (settings.atlas_names, settings.atlas_names_sha256)
    if key not in _atlas_names:
        import nibabel as nib

        from ..labelnames import read_label_names

        values = np.unique(np.rint(np.asarray(nib.load(settings.atlas).dataobj))).astype(np.int64)
        _atlas_names.clear()
        _atlas_names[key] = read_label_names(settings.atlas_names, image=settings.atlas, values=values).names
    return _atlas_names[key]


def _atlas_on(atlas: str, image) -> np.ndarray:
    """The atlas' labels on the input's voxels (nearest neighbour through both affines), cached."""
    import nibabel as nib

    from ..runner import labels_on_grid

    shape = spatial_and_time(image.shape)[0]
    key = (atlas, shape, image.affine.round(6).tobytes())
    if key not in _atlases:
        atlas_img = nib.load(atlas)
        labels = np.asarray(atlas_img.dataobj)
        if labels.ndim != 3:
            raise ValueError(f"the atlas {Path(atlas).name} is {labels.ndim}D; give a 3D label volume")
        labels = np.rint(labels).astype(np.int64)
        on_grid = labels_on_grid(labels, atlas_img.affine, shape, image.affine)
        if not on_grid.any():
            raise ValueError(f"the atlas {Path(atlas).name} does not overlap {Path(image.get_filename()).name} "
                             "in world coordinates; are they in the same space?")
        _atlases.clear()
        _atlases[key] = on_grid
    return _atlases[key]


def regions_tsv_rows(heat: np.ndarray, labels: np.ndarray, timepoint: int | None,
                     names: dict[int, str] | None = None) -> list[dict]:
    """Heat per label of one frame (X, Y, Z) as table rows (the widget's region table's numbers)."""
    from ..regions import region_table

    rows = region_table(heat, labels, names)
    return [{"timepoint": "n/a" if timepoint is None else timepoint, "index": r["index"], "label": r["label"],
             "voxels": r["voxels"],
             "mean_heat": r["mean heat"], "peak_heat": r["peak heat"], "share_of_heat": r["share of heat"]}
            for r in rows]


def peak_rows(heat: np.ndarray, affine: np.ndarray, labels: np.ndarray | None, names: dict | None,
              t0: int | None) -> list[dict]:
    """The clusters of each frame (C, X, Y, Z) as table rows: the widget's peak table, in scanner mm."""
    from ..peaktable import find_peaks

    return [{"timepoint": "n/a" if t0 is None else t0 + i, **row}
            for i, frame in enumerate(heat)
            for row in find_peaks(frame, affine, labels=labels, names=names).rows()]


# -- explaining a chunk ---------------------------------------------------------------------------------------

@dataclass
class Chunk:
    """One chunk's results. heat: method -> (C, X, Y, Z) float32 in stored order (C = 1 for 3D)."""

    t0: int
    t1: int
    heat: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)  # method -> {"method", "layer", "details"} as used
    probabilities: list = field(default_factory=list)  # (C, K)
    explained: list = field(default_factory=list)  # (C,) explained class per timepoint
    predicted: list = field(default_factory=list)  # (C,)
    regions: dict = field(default_factory=dict)  # method -> rows
    peaks: dict = field(default_factory=dict)  # method -> rows (clusters of each timepoint's map)
    heat_curve: dict = field(default_factory=dict)  # method -> (C,) heat in the atlas' labels, or peak
    timings: dict = field(default_factory=dict)
    batch_size: int = 0

    def info(self) -> dict:
        """Everything but the heat (small: sent back through Dask)."""
        return {k: v for k, v in self.__dict__.items() if k != "heat"}


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _explain(model, volumes: np.ndarray, job: Job, choice, batch: int) -> dict:
    """method -> Explanation of ``volumes`` with the job's settings."""
    from ..api import explain
    from ..choice import explain_auto

    s = job.settings
    common = dict(pooling=s.pooling, target=s.target, threshold=s.threshold, upsample=s.upsample,
                  device=s.device, batch_size=batch, baseline=s.baseline, **s.method_settings())
    plain = [m for m in job.methods if m != AUTO]
    out = dict(explain(model, volumes, method=plain, layer=s.layer, **common)) if plain else {}
    if AUTO in job.methods:
        out[AUTO] = explain_auto(model, volumes, choice=choice, **common)
    return out


def explain_chunk(job: Job, t0: int, t1: int, choice=None) -> Chunk:
    """Read timepoints ``t0:t1`` of the job's input, explain them with every method of the job.

    On an out-of-memory error the chunk is explained again with half the batch, down to one.
    """
    import torch

    from ..orientation import reorientation_for

    chunk = Chunk(t0=t0, t1=t1)
    loaded, load_s = loaded_model(job.model, job.settings.threads)
    start = time.perf_counter()
    image = _reading(job.input.path)
    volumes = read_volumes(image, t0, t1)
    read_s = time.perf_counter() - start
    stored = stored_codes(image)
    turn = reorientation_for(stored, stored, loaded.input_orientation)
    batch = job.settings.batch_size
    start = time.perf_counter()
    while True:
        try:
            results = _explain(loaded.model, turn.to_model(volumes), job, choice, batch)
            break
        except Exception as err:
            if not _is_out_of_memory(err) or batch == 1:
                raise
            batch = max(1, batch // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    explain_s = time.perf_counter() - start
    series = volumes.ndim == 4
    labels = _atlas_on(job.settings.atlas, image) if job.settings.atlas else None
    names = atlas_names(job.settings) if labels is not None else None
    for method, exp in results.items():
        heat = turn.to_volume(exp.heatmap)
        heat = heat if series else heat[None]
        chunk.heat[method] = heat.astype(np.float32, copy=False)
        chunk.methods[method] = {"method": exp.method, "layer": exp.layer, "details": exp.extra}
        if labels is not None:
            chunk.regions[method] = [row for i, frame in enumerate(heat)
                                     for row in regions_tsv_rows(frame, labels, t0 + i if series else None, names)]
        chunk.heat_curve[method] = region_heat(heat, labels)[0].tolist()
        chunk.peaks[method] = peak_rows(heat, image.affine, labels, names, t0 if series else None)
    first = next(iter(results.values()))
    chunk.probabilities = np.atleast_2d(first.probabilities).tolist()
    chunk.explained = np.atleast_1d(first.target).tolist()
    chunk.predicted = np.atleast_1d(first.predicted).tolist()
    chunk.batch_size = batch
    chunk.timings = {"read_s": read_s, "explain_s": explain_s, "model_load_s": load_s}
    return chunk


# -- tasks (what Dask runs) ----------------------------------------------------------------------------------

def _failure(job: Job, err: BaseException) -> dict:
    from ..runner import describe_error

    return {"input": str(job.input.path), "error": describe_error(err, job.settings.device)}


def _worker_facts() -> dict:
    return {"worker": f"{socket.gethostname()}:{os.getpid()}",
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def choose_task(job: Job):
    """The ``auto`` choice for a chunked input, made once on a few of its timepoints."""
    from ..choice import CHOICE_VOLUMES, choose_method
    from ..orientation import reorientation_for

    try:
        loaded, _ = loaded_model(job.model, job.settings.threads)
        image = open_source(job.input.path)
        picks = np.linspace(0, job.volumes - 1, CHOICE_VOLUMES).round().astype(int)
        volumes = np.concatenate([read_volumes(image, int(t), int(t) + 1) for t in picks])
        stored = stored_codes(image)
        volumes = reorientation_for(stored, stored, loaded.input_orientation).to_model(volumes)
        s = job.settings
        return choose_method(loaded.model, volumes, target=s.target, device=s.device, baseline=s.baseline,
                             pooling=s.pooling)
    except Exception as err:
        return _failure(job, err)


def chunk_task(job: Job, t0: int, t1: int, choice=None) -> dict:
    """Explain one chunk of a long run and keep its maps as a part file; returns its info."""
    if isinstance(choice, dict):  # the choice failed: so does the chunk
        return choice
    try:
        folder = job.parts_folder
        done = folder / f"t{t0:06d}-{t1:06d}.npz"
        if done.is_file():  # finished before an interruption
            with np.load(done, allow_pickle=False) as part:
                import json

                return json.loads(str(part["info"]))
        chunk = explain_chunk(job, t0, t1, choice)
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        info = {**chunk.info(), **_worker_facts()}
        _save_part(done, chunk, info)
        info["timings"]["write_s"] = time.perf_counter() - start
        return info
    except Exception as err:
        return _failure(job, err)


def _save_part(path: Path, chunk: Chunk, info: dict) -> None:
    import json

    from ..atomic import write_atomic

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, info=json.dumps(info, default=json_default), **{f"heat_{m}": h for m, h in chunk.heat.items()})

    write_atomic(path, write)


def input_task(job: Job) -> dict:
    """Explain a 3D volume or a short run in one go and write its outputs."""
    try:
        chunk = explain_chunk(job, 0, job.volumes)
        info = {**chunk.info(), **_worker_facts()}
        return finish(job, [info], heat={m: [h] for m, h in chunk.heat.items()})
    except Exception as err:
        return _failure(job, err)


def finish_task(job: Job, *infos: dict) -> dict:
    """Join a chunked run's parts into its outputs (any failed chunk fails the input)."""
    failed = next((i for i in infos if "error" in i), None)
    try:
        if failed is not None:
            return failed
        return finish(job, list(infos))
    except Exception as err:
        return _failure(job, err)
    finally:
        shutil.rmtree(job.parts_folder, ignore_errors=True)
        try:
            job.parts_folder.parent.rmdir()  # the last input's parts gone: no empty folder left
        except OSError:
            pass


def _frames(job: Job, method: str, infos: list[dict], heat: dict | None):
    """The method's map frames in time order, from memory or from the part files."""
    if heat is not None:
        for block in heat[method]:
            yield from block
        return
    for info in infos:
        with np.load(job.parts_folder / f"t{info['t0']:06d}-{info['t1']:06d}.npz", allow_pickle=False) as part:
            yield from part[f"heat_{method}"]


def finish(job: Job, infos: list[dict], heat: dict | None = None) -> dict:
    """Write each method's map, regions table and sidecar (last) for one input; returns a summary."""
    from .. import __version__

    infos = sorted(infos, key=lambda i: i["t0"])
    image = open_source(job.input.path)
    spatial, time_len = spatial_and_time(image.shape)
    shape = spatial if time_len is None else (*spatial, time_len)
    loaded, _ = loaded_model(job.model, job.settings.threads)
    names = list(loaded.summary.class_names)
    probabilities = [p for i in infos for p in i["probabilities"]]
    predicted = [int(p) for i in infos for p in i["predicted"]]
    explained = [int(p) for i in infos for p in i["explained"]]
    tr = _repetition_time(image) if time_len is not None else None
    timings = {key: round(sum(i["timings"].get(key, 0.0) for i in infos), 4)
               for key in ("read_s", "explain_s", "write_s", "model_load_s")}
    written = {}
    for method in job.methods:
        outputs = job.outputs(method)
        outputs.heatmap.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        write_map(outputs.heatmap, image, shape, _frames(job, method, infos, heat))
        regions = [row for i in infos for row in i["regions"].get(method, [])]
        if job.settings.atlas:
            write_table(outputs.regions, regions, REGION_COLUMNS)
        write_table(outputs.peaks, [row for i in infos for row in i.get("peaks", {}).get(method, [])], PEAK_COLUMNS)
        if time_len is not None:
            write_time_course(outputs.timeseries, job, infos, method, tr, names)
        used = infos[0]["methods"][method]
        sidecar = {
            "Description": f"Class-activation map ({used['method']}) of the source under a 3D ViT, "
                           "on the source's voxels",
            "Sources": [job.input.label],
            "fingerprint": job.fingerprint(method),
            "settings": job.settings.result_settings(method),
            "method_used": used["method"], "layer_used": used["layer"],
            "auto": (used["details"] or {}).get("auto"),
            "model": {"path": job.model.path, "sha256": job.model.sha256, "config_sha256": job.model.config_sha256},
            "source": {"path": str(job.input.path), **job.source, "shape": list(image.shape),
                       "orientation": stored_codes(image)},
            "entities": {k: v for k, v in job.input.entities.items() if not k.startswith("_")},
            "class_names": names, "timepoints": time_len, "repetition_time": tr,
            "explained_class": explained, "predicted": predicted,
            "predicted_name": [names[p] if p < len(names) else str(p) for p in predicted],
            "probabilities": probabilities,
            "time_course": outputs.timeseries.name if time_len is not None else None,
            "peaks": {"table": outputs.peaks.name, "threshold": "half of each map's maximum",
                      "clusters": f"26-connected, at least {DEFAULT_MIN_VOXELS} voxels",
                      "coordinates": "scanner mm (the source's affine)"},
            "regions": ({"atlas": job.settings.atlas, "names": job.settings.atlas_names, "table": outputs.regions.name,
                         "mean_over_time": _mean_rows(regions)} if job.settings.atlas else None),
            "timings": {**timings, "write_s": round(timings["write_s"] + time.perf_counter() - start, 4),
                        "chunks": len(infos), "batch_sizes": sorted({i["batch_size"] for i in infos}),
                        "workers": sorted({i.get("worker", "") for i in infos}),
                        "peak_rss_mb": max(i.get("peak_rss_mb", 0.0) for i in infos)},
            "software": {"napari_g3dvit": __version__},
        }
        write_json(outputs.sidecar, sidecar)  # last: its presence means the outputs are complete
        outputs.error.unlink(missing_ok=True)
        written[method] = str(outputs.heatmap)
    return {"input": str(job.input.path), "maps": written, "timepoints": time_len, "timings": timings,
            "chunks": len(infos), "workers": sorted({i.get("worker", "") for i in infos})}


def write_time_course(target: Path, job: Job, infos: list[dict], method: str, tr: float | None,
                      names: list[str]) -> None:
    """A run's time course, the same table the Time course dock exports (events beside the source)."""
    from ..timecourse import HEAT_IN_REGION, HEAT_PEAK, events_beside, from_heat, write_table

    heat = [h for i in infos for h in i["heat_curve"][method]]
    probabilities = [p for i in infos for p in i["probabilities"]]
    column = HEAT_IN_REGION if job.settings.atlas else HEAT_PEAK
    courses = from_heat(np.asarray(heat), probabilities, column, tr=tr or 1.0,
                        events=events_beside(job.input.path), class_names=names)
    write_table(courses, target)


def _repetition_time(image) -> float | None:
    from ..volumes import _seconds

    zooms = image.header.get_zooms()
    axis = 4 if len(image.shape) == 5 else 3
    if len(zooms) <= axis:
        return None
    return _seconds(zooms[axis], image.header.get_xyzt_units()[1])


def _mean_rows(rows: list[dict]) -> list[dict]:
    """Per label, the mean over timepoints of its mean heat and share of heat."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(str(row["label"]), []).append(row)
    return [{"label": label, "voxels": group[0]["voxels"],
             "mean_heat": float(np.mean([r["mean_heat"] for r in group])),
             "share_of_heat": float(np.mean([r["share_of_heat"] for r in group]))}
            for label, group in by_label.items()]
