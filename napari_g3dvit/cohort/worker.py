"""The work a cohort run sends to each worker: read an input lazily, explain it, write its outputs.

Tasks never raise for a bad input: they return ``{"error": message}`` so that the run goes on
and the input is recorded as failed (a worker that dies is Dask's to retry). The model (and an
atlas) is loaded once per worker process and kept, keyed by the content of every file it came
from, so an edited config or atlas is loaded anew by a long-lived worker.

``input_task`` does one input whole, chunk by chunk: the next chunk is read (decompressed) in a
thread while this one is explained, and the maps are compressed in another as they come, so
reading and writing overlap explaining. Each map, its tables and its sidecar are staged as hidden
files and renamed together at the end: an output is complete or absent, never half new. When a
run has fewer inputs than workers, ``run`` splits long inputs into ``chunk_task`` s (kept as part
files) joined by ``finish_task``.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..peaktable import DEFAULT_MIN_VOXELS
from ..registry import AUTO
from ..timecourse import region_heat
from .inputs import is_dangling
from .jobs import Job, ModelRef
from .writing import MapStream, json_default, json_writer, table_writer

PEAK_COLUMNS = ("timepoint", "cluster", "x_mm", "y_mm", "z_mm", "peak_heat", "voxels", "volume_mm3", "mean_heat",
                "label")
REGION_COLUMNS = ("timepoint", "index", "label", "voxels", "mean_heat", "peak_heat", "share_of_heat")
#: deflate never expands data more than about 1032-fold: a .nii.gz whose header claims more voxels
#: than that many times its size cannot hold them
MAX_DEFLATE_RATIO = 1032

_models: dict[tuple, object] = {}  # one loaded model per worker process
_atlases: dict[tuple, np.ndarray] = {}
model_loads = 0  # how often this process loaded a model (tests check it is once)


def loaded_model(ref: ModelRef, threads: int | None = None):
    """The ``runner.LoadedModel`` for ``ref``, loaded on first use in this process; (model, seconds).

    Kept by the content of the weights and of the config (an edited config is a new model).
    threads: torch's intra-op threads for the calling task. Set on every call: Dask runs tasks in
    pool threads that start with one OpenMP thread each, whatever the process was given.
    """
    global model_loads
    import torch

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    key = (ref.path, ref.sha256, ref.config, ref.config_sha256)
    if key in _models:
        return _models[key], 0.0
    from ..runner import open_model

    start = time.perf_counter()
    loaded = open_model(ref.path, ref.config)
    _models.clear()  # one model per worker: a new model replaces the old one
    _models[key] = loaded
    model_loads += 1
    return loaded, time.perf_counter() - start


def warm_up(ref: ModelRef, threads: int | None = None) -> float:
    """Load the model in this worker before any task needs it; returns the seconds it took."""
    return loaded_model(ref, threads)[1]


def _size_words(count: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def check_stored_size(image, path: Path) -> None:
    """NiftiError when the file is too small for the voxels its header claims (a truncated file).

    Read from the header and the file's size only: a header claiming 10^7 timepoints of which 4
    are stored is refused at once, not after reading.
    """
    from ..errors import NiftiError

    header = image.header
    needed = int(header.get_data_offset()) + int(np.prod([int(n) for n in image.shape])) * \
        np.dtype(header.get_data_dtype()).itemsize
    size = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    if needed <= (size * MAX_DEFLATE_RATIO + 4096 if compressed else size):
        return
    shape = "x".join(str(int(n)) for n in image.shape)
    raise NiftiError(f"{path.name} is truncated: its header describes {shape} voxels of "
                     f"{header.get_data_dtype()} ({_size_words(needed)}), which a {_size_words(size)} "
                     f"{'gzip ' if compressed else ''}file cannot hold; copy or export it again")


def open_source(path: Path, keep_open: bool = False):
    """The input's nibabel image (data not read yet); a clear error for what is not a 3D/4D NIfTI.

    keep_open: keep the file (and its decompressor) open between reads, for reading a run's
    chunks in order: gzip cannot seek, so reopening for each chunk would decompress the run from
    its start every time.
    """
    import nibabel as nib

    from ..errors import NiftiError
    from ..models.space import gzip_hint

    path = Path(path)
    if is_dangling(path):
        raise NiftiError(f"{path.name} is a link whose target is missing ({os.readlink(path)}): a DataLad / "
                         f"git-annex file not fetched yet? Get it with 'datalad get {path}'")
    try:
        image = nib.load(str(path), keep_file_open=keep_open)
    except Exception as err:
        raise NiftiError(f"{path.name} is not a readable NIfTI file ({err}){gzip_hint(path)}") from err
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise NiftiError(f"{path.name} is a {type(image).__name__}, not a NIfTI volume")
    shape = spatial_and_time(image.shape)
    if shape is None:
        raise NiftiError(f"{path.name} has shape {image.shape}; napari-g3dvit explains 3D volumes and 4D series")
    check_stored_size(image, path)
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


def map_shape(image) -> tuple[int, ...]:
    """(X, Y, Z) or (X, Y, Z, T): the shape of an input's maps."""
    spatial, time_len = spatial_and_time(image.shape)
    return spatial if time_len is None else (*spatial, time_len)


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


def prefetched(image, ranges: list[tuple[int, int]]):
    """``((t0, t1), volumes, read seconds)`` per range, the next one read in a thread meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    def read(span):
        start = time.perf_counter()
        volumes = read_volumes(image, *span)
        return volumes, time.perf_counter() - start

    with ThreadPoolExecutor(1, thread_name_prefix="g3dvit-read") as pool:
        pending = pool.submit(read, ranges[0])
        for index, span in enumerate(ranges):
            volumes, seconds = pending.result()
            if index + 1 < len(ranges):
                pending = pool.submit(read, ranges[index + 1])
            yield span, volumes, seconds


def _atlas_on(atlas: str, atlas_sha256: str | None, image) -> np.ndarray:
    """The atlas' labels on the input's voxels (nearest neighbour through both affines), cached by
    the atlas' content and the input's grid."""
    import nibabel as nib

    from ..runner import labels_on_grid

    shape = spatial_and_time(image.shape)[0]
    key = (atlas, atlas_sha256, shape, image.affine.round(6).tobytes())
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
    warnings: list = field(default_factory=list)  # what a user must hear about this chunk
    space: dict | None = None  # how the input was put into the model's grid
    device_used: str = ""

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


_plans: dict[tuple, object] = {}


def space_plan(job: Job, loaded, image):
    """How this input reaches the model's grid (cached per model and input grid)."""
    from ..models.space import ModelSpace, plan_for

    spatial = spatial_and_time(image.shape)[0]
    key = (id(loaded), spatial, image.affine.round(6).tobytes(), job.settings.interpolation)
    if key not in _plans:
        _plans.clear()
        _plans[key] = plan_for(ModelSpace.of_model(loaded.model), image.affine, spatial, job.settings.interpolation)
    return _plans[key]


def explain_chunk(job: Job, t0: int, t1: int, choice=None, image=None, volumes=None, read_s: float = 0.0,
                  loaded=None) -> Chunk:
    """Explain timepoints ``t0:t1`` of the job's input with every method of the job.

    image / volumes: the input and those timepoints when the caller read them already (else read
    here); loaded: the model when the caller holds it (and has set torch's threads). The input is resampled into the model's grid when it is on another one, and each map
    brought back onto the input's voxels. On an out-of-memory error the chunk is explained again
    with half the batch, down to one.
    """
    import torch

    from ..devices import MPS_FALLBACK_NOTE
    from ..orientation import reorientation_for

    chunk = Chunk(t0=t0, t1=t1)
    load_s = 0.0
    if loaded is None:
        loaded, load_s = loaded_model(job.model, job.settings.threads)
    if volumes is None:
        start = time.perf_counter()
        image = image if image is not None else _reading(job.input.path)
        volumes = read_volumes(image, t0, t1)
        read_s = time.perf_counter() - start
    plan = space_plan(job, loaded, image)
    turn = reorientation_for(plan.codes, plan.codes, loaded.input_orientation)
    batch = job.settings.batch_size
    start = time.perf_counter()
    model_input = turn.to_model(plan.to_model(volumes))
    while True:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results = _explain(loaded.model, model_input, job, choice, batch)
            break
        except Exception as err:
            if not _is_out_of_memory(err) or batch == 1:
                raise
            batch = max(1, batch // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    explain_s = time.perf_counter() - start
    series = volumes.ndim == 4
    span = f"timepoints {t0}-{t1 - 1}" if series else "the volume"
    if not np.any(volumes):
        chunk.warnings.append(f"the source is zero everywhere in {span} (an empty or fully masked scan?); "
                              "its map says nothing")
    chunk.warnings += list(dict.fromkeys(str(w.message) for w in caught  # the library's own, not torch's
                                         if "napari_g3dvit" in str(w.filename)))
    labels = _atlas_on(job.settings.atlas, job.settings.atlas_sha256, image) if job.settings.atlas else None
    names = atlas_names(job.settings) if labels is not None else None
    for method, exp in results.items():
        heat = plan.to_scan(turn.to_volume(exp.heatmap))
        heat = heat if series else heat[None]
        chunk.heat[method] = heat.astype(np.float32, copy=False)
        chunk.methods[method] = {"method": exp.method, "layer": exp.layer, "details": exp.extra}
        if labels is not None:
            chunk.regions[method] = [row for i, frame in enumerate(heat)
                                     for row in regions_tsv_rows(frame, labels, t0 + i if series else None, names)]
        chunk.heat_curve[method] = region_heat(heat, labels)[0].tolist()
        chunk.peaks[method] = peak_rows(heat, image.affine, labels, names, t0 if series else None)
    first = next(iter(results.values()))
    chunk.device_used = str(first.device)
    if str(job.settings.device).startswith("mps") and chunk.device_used == "cpu":
        chunk.warnings.append(MPS_FALLBACK_NOTE)
    chunk.probabilities = np.atleast_2d(first.probabilities).tolist()
    chunk.explained = np.atleast_1d(first.target).tolist()
    chunk.predicted = np.atleast_1d(first.predicted).tolist()
    chunk.batch_size = batch
    chunk.space = plan.record()
    chunk.timings = {"read_s": read_s, "explain_s": explain_s, "model_load_s": load_s}
    return chunk


# -- tasks (what Dask runs) ----------------------------------------------------------------------------------

def _failure(job: Job, err: BaseException) -> dict:
    from ..runner import describe_error

    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):  # a full disk, a read-only folder
        where = f" ({err.filename})" if err.filename else ""
        message = (f"its outputs could not be written: {err.strerror or err}{where}; an earlier output of it, "
                   "if any, is kept whole")
    else:
        message = describe_error(err, job.settings.device)
    return {"input": str(job.input.path), "error": message}


def _worker_facts() -> dict:
    return {"worker": f"{socket.gethostname()}:{os.getpid()}",
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def report_progress(progress, job: Job, volumes: int) -> None:
    """Tell the client that ``volumes`` more of the job's volumes are explained.

    progress: a callable (in this process) or a Dask event topic (on a worker); None says nothing.
    """
    if progress is None:
        return
    if callable(progress):
        progress(job, volumes)
        return
    try:
        from distributed import get_worker

        get_worker().log_event(progress, {"input": job.input.label, "volumes": int(volumes)})
    except Exception:  # not on a worker (or the scheduler is gone): the final count still comes
        pass


def _choose(job: Job, loaded, image):
    """The ``auto`` choice for a run explained in chunks, made on a few of its timepoints, or the
    one this worker already made for the same model, input shape and settings (``choice_for``):
    the choice is made once per worker for a whole cohort of same-sized inputs."""
    from ..choice import CHOICE_POOL, choice_for
    from ..orientation import reorientation_for

    picks = np.unique(np.linspace(0, job.volumes - 1, min(CHOICE_POOL, job.volumes)).round().astype(int))
    volumes = np.concatenate([read_volumes(image, int(t), int(t) + 1) for t in picks])
    plan = space_plan(job, loaded, image)
    volumes = reorientation_for(plan.codes, plan.codes, loaded.input_orientation).to_model(plan.to_model(volumes))
    s = job.settings
    return choice_for(loaded.model, volumes, target=s.target, device=s.device, baseline=s.baseline,
                      pooling=s.pooling)[0]


def choose_task(job: Job):
    """The ``auto`` choice for an input split into chunk tasks (one task, before its chunks)."""
    try:
        loaded, _ = loaded_model(job.model, job.settings.threads)
        return _choose(job, loaded, open_source(job.input.path))
    except Exception as err:
        return _failure(job, err)


#: when reading a chunk takes more than this share of explaining it, the model gets one thread
#: fewer and that core reads and writes beside it (threads that share a core with the model's
#: OpenMP threads slow them more than they overlap)
READ_SHARE_FOR_A_CORE = 0.2


def input_task(job: Job, progress=None) -> dict:
    """Explain one input whole, chunk by chunk, and write its outputs (reads and writes overlapped)."""
    import torch

    streams: dict[str, MapStream] = {}
    threads = None
    try:
        loaded, _ = loaded_model(job.model, job.settings.threads)
        threads = torch.get_num_threads()
        image = open_source(job.input.path, keep_open=True)
        ranges = job.chunks
        choice = _choose(job, loaded, image) if AUTO in job.methods and len(ranges) > 1 else None
        for method in job.methods:
            target = job.outputs(method).heatmap
            target.parent.mkdir(parents=True, exist_ok=True)
            streams[method] = MapStream(target, image, map_shape(image))
        infos, waited_s = [], 0.0
        for index, ((t0, t1), volumes, read_s) in enumerate(prefetched(image, ranges)):
            chunk = explain_chunk(job, t0, t1, choice, image=image, volumes=volumes, read_s=read_s, loaded=loaded)
            if (index == 0 and len(ranges) > 1 and threads > 1
                    and read_s > READ_SHARE_FOR_A_CORE * chunk.timings["explain_s"]):
                torch.set_num_threads(threads - 1)
            chunk.timings["torch_threads"] = torch.get_num_threads()
            start = time.perf_counter()
            for method, stream in streams.items():
                stream.put(chunk.heat[method])
            waited_s += time.perf_counter() - start
            infos.append({**chunk.info(), **_worker_facts()})
            report_progress(progress, job, t1 - t0)
        maps = {}
        for method in list(streams):
            stream = streams.pop(method)
            maps[method] = stream.close()
            waited_s += stream.busy_s
        infos[0]["timings"]["write_s"] = waited_s
        return finish(job, infos, maps, image)
    except Exception as err:
        for stream in streams.values():
            stream.discard()
        return _failure(job, err)
    finally:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


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

                return {**json.loads(str(part["info"])), "reused": True}
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


def finish_task(job: Job, *infos: dict) -> dict:
    """Join a chunked run's parts into its outputs (any failed chunk fails the input)."""
    failed = next((i for i in infos if "error" in i), None)
    streams: dict[str, MapStream] = {}
    try:
        if failed is not None:
            return failed
        infos = sorted(infos, key=lambda i: i["t0"])
        image = open_source(job.input.path)
        start = time.perf_counter()
        maps = {}
        for method in job.methods:
            target = job.outputs(method).heatmap
            target.parent.mkdir(parents=True, exist_ok=True)
            streams[method] = stream = MapStream(target, image, map_shape(image))
            for info in infos:
                with np.load(job.parts_folder / f"t{info['t0']:06d}-{info['t1']:06d}.npz", allow_pickle=False) as part:
                    stream.put(part[f"heat_{method}"])
            maps[method] = streams.pop(method).close()
        infos[0]["timings"]["write_s"] = infos[0]["timings"].get("write_s", 0.0) + time.perf_counter() - start
        return finish(job, list(infos), maps, image)
    except Exception as err:
        for stream in streams.values():
            stream.discard()
        return _failure(job, err)
    finally:
        shutil.rmtree(job.parts_folder, ignore_errors=True)
        try:
            job.parts_folder.parent.rmdir()  # the last input's parts gone: no empty folder left
        except OSError:
            pass


def finish(job: Job, infos: list[dict], maps: dict[str, Path], image) -> dict:
    """Stage each method's regions table, time course and sidecar beside its staged map, then rename
    them all together (an output is whole or absent); returns a summary of the input.

    maps: method -> the map's sealed temporary file (``MapStream.close``).
    """
    from .. import __version__
    from ..atomic import commit, discard, stage

    infos = sorted(infos, key=lambda i: i["t0"])
    spatial, time_len = spatial_and_time(image.shape)
    loaded, _ = loaded_model(job.model, job.settings.threads)
    names = list(loaded.summary.class_names)
    probabilities = [p for i in infos for p in i["probabilities"]]
    predicted = [int(p) for i in infos for p in i["predicted"]]
    explained = [int(p) for i in infos for p in i["explained"]]
    notes = list(dict.fromkeys(w for i in infos for w in i.get("warnings", [])))
    tr = _repetition_time(image) if time_len is not None else None
    timings = {key: round(sum(i["timings"].get(key, 0.0) for i in infos), 4)
               for key in ("read_s", "explain_s", "write_s", "model_load_s")}
    staged: list[tuple[Path, Path]] = [(maps[m], job.outputs(m).heatmap) for m in job.methods]
    written = {}
    try:
        start = time.perf_counter()
        for method in job.methods:
            outputs = job.outputs(method)
            regions = [row for i in infos for row in i["regions"].get(method, [])]
            if job.settings.atlas:
                staged.append((stage(outputs.regions, table_writer(regions, REGION_COLUMNS)), outputs.regions))
            peaks = [row for i in infos for row in i.get("peaks", {}).get(method, [])]
            staged.append((stage(outputs.peaks, table_writer(peaks, PEAK_COLUMNS)), outputs.peaks))
            if time_len is not None:
                staged.append((stage(outputs.timeseries, time_course_writer(job, infos, method, tr, names)),
                               outputs.timeseries))
            used = infos[0]["methods"][method]
            sidecar = {
                "Description": f"Class-activation map ({used['method']}) of the source under a 3D ViT, "
                               "on the source's voxels",
                "Sources": [job.input.label],
                "fingerprint": job.fingerprint(method),
                "settings": job.settings.result_settings(method),
                "method_used": used["method"], "layer_used": used["layer"],
                "auto": (used["details"] or {}).get("auto"),
                "model": {"path": job.model.path, "sha256": job.model.sha256,
                          "config_sha256": job.model.config_sha256},
                "source": {"path": str(job.input.path), **job.source, "shape": list(image.shape),
                           "orientation": stored_codes(image)},
                "space": infos[0].get("space"),
                "entities": {k: v for k, v in job.input.entities.items() if not k.startswith("_")},
                "class_names": names, "timepoints": time_len, "repetition_time": tr,
                "explained_class": explained, "predicted": predicted,
                "predicted_name": [names[p] if p < len(names) else str(p) for p in predicted],
                "probabilities": probabilities,
                "warnings": notes,
                "device_used": infos[0].get("device_used"),
                "time_course": outputs.timeseries.name if time_len is not None else None,
                "peaks": {"table": outputs.peaks.name, "threshold": "half of each map's maximum",
                          "clusters": f"26-connected, at least {DEFAULT_MIN_VOXELS} voxels",
                          "coordinates": "scanner mm (the source's affine)"},
                "regions": ({"atlas": job.settings.atlas, "names": job.settings.atlas_names,
                             "table": outputs.regions.name, "mean_over_time": _mean_rows(regions)}
                            if job.settings.atlas else None),
                "map_bytes": maps[method].stat().st_size,
                "timings": {**timings, "write_s": round(timings["write_s"] + time.perf_counter() - start, 4),
                            "chunks": len(infos), "batch_sizes": sorted({i["batch_size"] for i in infos}),
                            "torch_threads": sorted({i["timings"]["torch_threads"] for i in infos
                                                     if i["timings"].get("torch_threads")}),
                            "workers": sorted({i.get("worker", "") for i in infos}),
                            "peak_rss_mb": max(i.get("peak_rss_mb", 0.0) for i in infos)},
                "software": {"napari_g3dvit": __version__},
            }
            staged.append((stage(outputs.sidecar, json_writer(sidecar)), outputs.sidecar))
            written[method] = str(outputs.heatmap)
        commit(staged)  # map, tables and sidecar of every method: all renamed, or none
    except BaseException:
        discard(tmp for tmp, _ in staged)
        raise
    for method in job.methods:
        try:
            job.outputs(method).error.unlink(missing_ok=True)  # an earlier failure's record
        except OSError:  # no logs folder to speak of (a file named logs): nothing recorded there
            pass
    return {"input": str(job.input.path), "label": job.input.label, "maps": written, "timepoints": time_len,
            "timings": timings, "chunks": len(infos), "warnings": notes,
            "reused_chunks": sum(1 for i in infos if i.get("reused")),
            "workers": sorted({i.get("worker", "") for i in infos})}


def time_course_writer(job: Job, infos: list[dict], method: str, tr: float | None, names: list[str]):
    """A run's time course, the table the Time course dock exports (events beside the source).

    Without an atlas the map's peak would be the heat column, and a normalised map's peak is 1 at
    every timepoint: the column says nothing and is left out.
    """
    from ..timecourse import HEAT_IN_REGION, HEAT_PEAK, events_beside, from_heat, table_writer as course_table

    heat = [h for i in infos for h in i["heat_curve"][method]]
    probabilities = [p for i in infos for p in i["probabilities"]]
    column = HEAT_IN_REGION if job.settings.atlas else HEAT_PEAK
    courses = from_heat(np.asarray(heat), probabilities, column, tr=tr or 1.0,
                        events=events_beside(job.input.path), class_names=names)
    return course_table(courses, "\t", leave_out=() if job.settings.atlas else (HEAT_PEAK,))


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
