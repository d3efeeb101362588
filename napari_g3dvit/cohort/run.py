"""Running a cohort: plan the jobs, send them to Dask workers, follow them, record what failed.

``plan`` skips every output whose sidecar records the same fingerprint (a rerun resumes) and
reads only headers. ``run_jobs`` submits one task per input (per chunk of timepoints for long
runs, then one that joins them); a worker that dies has its tasks rescheduled by Dask; a task
that fails for its input (a corrupt file, a wrong size) returns the error, which goes to
``OUT_DIR/logs/<name>_error.json`` while the run goes on. ``run_here`` does the same work in
this process, one task after the other, without Dask.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from ..registry import AUTO
from .inputs import CohortError, Input
from .jobs import Job, ModelRef, Settings, is_done, plain, source_identity
from .worker import chunk_task, choose_task, finish_task, input_task, open_source, spatial_and_time
from .writing import write_json


@dataclass
class Report:
    """What a run did. done / failed: one dict per input (failed ones carry ``error``)."""

    done: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    skipped: int = 0  # inputs whose every output was already complete
    volumes: int = 0  # volumes (timepoints) explained in this run
    seconds: float = 0.0
    dashboard: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        rate = self.volumes / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{len(self.done)} inputs explained ({self.volumes} volumes in {self.seconds:.1f} s, "
                 f"{rate:.2f} volumes/s), {self.skipped} already done, {len(self.failed)} failed"]
        lines += [f"  failed: {f['input']}: {f['error']}" for f in self.failed]
        return "\n".join(lines)


def record_failure(out_dir: Path, job: Job, error: str) -> dict:
    """Write ``logs/<name>_error.json`` for each of the job's methods; returns the failure."""
    failure = {"input": str(job.input.path), "error": error}
    for method in job.methods:
        target = job.outputs(method).error
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, {**failure, "method": method, "Sources": [job.input.label],
                            "entities": {k: v for k, v in job.input.entities.items() if not k.startswith("_")}})
    return failure


def plan(inputs: Sequence[Input], out_dir: str | os.PathLike, model: ModelRef, settings: Settings,
         overwrite: bool = False) -> tuple[list[Job], int, list[dict]]:
    """(jobs to run, inputs already complete, failures found while reading headers)."""
    jobs, skipped, failed = [], 0, []
    for item in inputs:
        job = Job(input=item, methods=settings.methods, out_dir=str(out_dir), model=model, settings=settings)
        try:
            job = replace(job, source=source_identity(item.path))
            job = replace(job, timepoints=spatial_and_time(open_source(item.path).shape)[1])
        except Exception as err:
            failed.append(record_failure(Path(out_dir), job, str(err)))
            continue
        todo = tuple(m for m in settings.methods if overwrite or not is_done(job, m))
        if not todo:
            skipped += 1
            continue
        job = replace(job, methods=todo)
        _remove_leftovers(job)
        jobs.append(job)
    return jobs, skipped, failed


def _remove_leftovers(job: Job) -> None:
    """Temporary files an interrupted run left beside this job's outputs (hidden, never complete)."""
    for method in job.methods:
        outputs = job.outputs(method)
        for target in (outputs.heatmap, outputs.sidecar, outputs.regions, outputs.timeseries):
            for stale in target.parent.glob(f".{target.name}.*"):
                stale.unlink(missing_ok=True)
    parts = job.parts_folder.parent
    if parts.is_dir():  # chunks kept for other settings or methods of this input
        pattern = re.compile(re.escape(job.input.stem) + r"-[0-9a-f]{12}")
        for stale in parts.iterdir():
            if stale != job.parts_folder and pattern.fullmatch(stale.name):
                shutil.rmtree(stale, ignore_errors=True)


def write_dataset_description(out_dir: Path, bids_dir: Path | None, model: ModelRef, settings: Settings) -> None:
    """The derivative dataset's ``dataset_description.json`` (kept when it already says the same)."""
    from .. import __version__

    source = {"URL": bids_dir.resolve().as_uri()} if bids_dir else None
    if bids_dir:
        try:
            given = json.loads((bids_dir / "dataset_description.json").read_text())
            if given.get("DatasetDOI"):
                source["DOI"] = given["DatasetDOI"]
            if given.get("Name"):
                source["Name"] = given["Name"]
        except (OSError, ValueError):
            pass
    description = {
        "Name": "napari-g3dvit class-activation maps",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "napari-g3dvit", "Version": __version__,
                         "Description": "class-activation maps of a 3D Vision Transformer, one per input file",
                         "CodeURL": "https://github.com/napari-g3dvit/napari-g3dvit",
                         "Settings": {k: v for k, v in plain(settings).items() if k not in ("threads",)},
                         "Model": {"path": model.path, "sha256": model.sha256}}],
        "SourceDatasets": [source] if source else [],
    }
    target = out_dir / "dataset_description.json"
    try:
        if json.loads(target.read_text()) == description:
            return
    except (OSError, ValueError):
        pass
    write_json(target, description)


# -- Dask --------------------------------------------------------------------------------------------------

def start_client(workers: int | None = None, scheduler: str | None = None, threads: int | None = None):
    """A Dask client: on an existing scheduler's address, or on a new local cluster of processes."""
    try:
        from distributed import Client
    except ImportError as err:
        raise CohortError("g3dvit bids and g3dvit batch run on Dask: pip install 'napari-g3dvit[cluster]'") from err
    if scheduler:
        try:
            return Client(scheduler, timeout="30s")
        except OSError as err:
            raise CohortError(f"no Dask scheduler answers at {scheduler} ({err})") from err
    client = Client(local_cluster(workers, threads))
    client.register_plugin(_LeaveCtrlCToTheClient())
    return client


def local_cluster(workers: int | None = None, threads: int | None = None, dashboard: bool = True):
    """Worker processes on this machine, one task at a time each, sharing the cores between them.

    threads: torch/OpenMP threads per worker (default: the cores divided among the workers);
    Dask would otherwise start each worker with one OpenMP thread.
    """
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    workers = workers or cores
    threads = str(threads or max(1, cores // workers))
    # Dask's workers return freed memory to the system at once (a 64 kB trim threshold), which
    # costs torch's large activations page faults on every batch: 128 MB keeps them reusable
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                        dashboard_address=":8787" if dashboard and _has_dashboard() else None,
                        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                             "MALLOC_TRIM_THRESHOLD_": str(128 << 20)})


def _ignore_interrupts() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - the cluster extra is not installed
    WorkerPlugin = object


class _LeaveCtrlCToTheClient(WorkerPlugin):
    """Local workers ignore Ctrl-C (the terminal sends it to every process of the run): the client
    catches it, cancels what has not finished, and shuts the workers down in order."""

    name = "g3dvit-ctrl-c"

    def setup(self, worker) -> None:
        worker.loop.add_callback(_ignore_interrupts)


def _has_dashboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def close_client(client) -> None:
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)  # tasks cancelled on the way out are expected
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _submit(client, jobs: Sequence[Job]) -> tuple[dict, dict]:
    """Submit every task; returns ({future: volumes it explains}, {final future: job})."""
    counted, finals = {}, {}
    for job in jobs:
        if len(job.chunks) == 1:
            final = client.submit(input_task, job, pure=False, retries=1)
            counted[final] = job.volumes
        else:
            choice = client.submit(choose_task, job, pure=False, retries=1) if AUTO in job.methods else None
            parts = [client.submit(chunk_task, job, t0, t1, choice, pure=False, retries=1) for t0, t1 in job.chunks]
            counted.update({part: t1 - t0 for part, (t0, t1) in zip(parts, job.chunks)})
            final = client.submit(finish_task, job, *parts, pure=False, retries=1)
        finals[final] = job
    return counted, finals


def run_jobs(jobs: Sequence[Job], client, progress: bool = True, report: Report | None = None) -> Report:
    """Run the jobs on ``client``'s workers; a KeyboardInterrupt cancels what has not finished."""
    from distributed import as_completed

    report = report or Report()
    counted, finals = _submit(client, jobs)
    bar = _bar(sum(job.volumes for job in jobs), progress)
    start = time.perf_counter()
    try:
        for future in as_completed(list(counted) + [f for f in finals if f not in counted]):
            try:
                outcome = future.result()
            except Exception as err:  # a worker died too often on it, or the task could not run
                outcome = {"error": f"{type(err).__name__}: {err}"}
            if future in counted and "error" not in outcome:
                report.volumes += counted[future]
                bar.update(counted[future])
            if future in finals:
                _settle(report, finals[future], outcome)
                bar.set_postfix_str(f"{len(report.done)} done, {len(report.failed)} failed", refresh=False)
    except KeyboardInterrupt:
        client.cancel(list(counted) + list(finals))
        raise
    finally:
        bar.close()
        report.seconds += time.perf_counter() - start
    return report


def run_here(jobs: Sequence[Job], progress: bool = True, report: Report | None = None) -> Report:
    """The same work in this process, one task after the other (no Dask)."""
    report = report or Report()
    bar = _bar(sum(job.volumes for job in jobs), progress)
    start = time.perf_counter()
    try:
        for job in jobs:
            if len(job.chunks) == 1:
                outcome = input_task(job)
                bar.update(job.volumes)
            else:
                choice = choose_task(job) if AUTO in job.methods else None
                infos = []
                for t0, t1 in job.chunks:
                    infos.append(chunk_task(job, t0, t1, choice))
                    bar.update(t1 - t0)
                outcome = finish_task(job, *infos)
            if "error" not in outcome:
                report.volumes += job.volumes
            _settle(report, job, outcome)
    finally:
        bar.close()
        report.seconds += time.perf_counter() - start
    return report


def _settle(report: Report, job: Job, outcome: dict) -> None:
    if "error" in outcome:
        report.failed.append(record_failure(Path(job.out_dir), job, outcome["error"]))
    else:
        report.done.append(outcome)


def _bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="vol", desc="explaining", disable=not show, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
