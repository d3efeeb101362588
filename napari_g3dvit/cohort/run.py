"""Running a cohort: plan the jobs, send them to Dask workers, follow them, record what failed.

``plan`` skips every output whose sidecar records the same fingerprint (a rerun resumes, and says
what it reused) and reads only headers. ``run_jobs`` submits one task per input; only when there
are fewer inputs than workers are long runs split into chunk tasks and a task joining them. A
worker that dies has its tasks rescheduled by Dask; a task that fails for its input (a corrupt
file, a wrong size) returns the error, which goes to ``OUT_DIR/logs/<name>_error.json`` while the
run goes on. Progress counts volumes as each chunk finishes (workers send an event per chunk).
``run_here`` does the same work in this process without Dask. A local cluster runs in a helper
process of its own (``cluster.py``), so that Ctrl-C stops the run quietly at any moment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

from ..registry import AUTO
from .inputs import CohortError, Input
from .jobs import Job, ModelRef, Settings, is_done, plain, source_identity
from .worker import chunk_task, choose_task, finish_task, input_task, open_source, spatial_and_time, warm_up
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
    reused: list = field(default_factory=list)  # the inputs skipped, by label
    reused_chunks: int = 0  # finished chunks of an interrupted run that were kept
    notices: list = field(default_factory=list)  # about the run as a whole (e.g. error records not written)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def warned(self) -> list:
        return [d for d in self.done if d.get("warnings")]

    def summary(self) -> str:
        rate = self.volumes / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{len(self.done)} inputs explained ({self.volumes} volumes in {self.seconds:.1f} s, "
                 f"{rate:.2f} volumes/s), {self.skipped} already done, {len(self.failed)} failed"]
        if self.reused:
            shown = ", ".join(self.reused[:5]) + (f" and {len(self.reused) - 5} more" if len(self.reused) > 5 else "")
            lines.append(f"  reused {len(self.reused)} complete output(s) (same model, settings and source): {shown}")
        if self.reused_chunks:
            lines.append(f"  reused {self.reused_chunks} finished chunk(s) of interrupted runs")
        lines += [f"  note: {n}" for n in self.notices]
        lines += [f"  warning: {d.get('label', d['input'])}: {w}" for d in self.warned for w in d["warnings"]]
        lines += [f"  failed: {f.get('label', f['input'])}: {f['error']}" for f in self.failed]
        return "\n".join(lines)


def record_failure(out_dir: Path, job: Job, error: str, report: "Report | None" = None) -> dict:
    """Write ``logs/<name>_error.json`` for each of the job's methods; returns the failure.

    When the records cannot be written (a file named ``logs`` is in the way, a full disk), the
    failure is still returned, and the report says why there is no record.
    """
    failure = {"input": str(job.input.path), "label": job.input.label, "error": error}
    for method in job.methods:
        target = job.outputs(method).error
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_json(target, {**failure, "method": method, "Sources": [job.input.label],
                                "entities": {k: v for k, v in job.input.entities.items() if not k.startswith("_")}})
        except OSError as err:
            note = (f"error records cannot be written to {target.parent} ({err.strerror or err}); "
                    "failures are listed here only")
            if report is not None and note not in report.notices:
                report.notices.append(note)
            break
    return failure


def plan(inputs: Sequence[Input], out_dir: str | os.PathLike, model: ModelRef, settings: Settings,
         overwrite: bool = False, report: "Report | None" = None) -> tuple[list[Job], int, list[dict]]:
    """(jobs to run, inputs already complete, failures found while reading headers).

    The inputs found complete are listed by label in ``report.reused``.
    """
    jobs, skipped, failed = [], 0, []
    for item in inputs:
        job = Job(input=item, methods=settings.methods, out_dir=str(out_dir), model=model, settings=settings)
        try:
            image = open_source(item.path)  # a missing link target or a truncated file is said here
            job = replace(job, source=source_identity(item.path))
            job = replace(job, timepoints=spatial_and_time(image.shape)[1])
        except Exception as err:
            failed.append(record_failure(Path(out_dir), job, str(err), report))
            continue
        todo = tuple(m for m in settings.methods if overwrite or not is_done(job, m))
        if not todo:
            skipped += 1
            if report is not None:
                report.reused.append(item.label)
            continue
        job = replace(job, methods=todo)
        _remove_leftovers(job)
        jobs.append(job)
    return jobs, skipped, failed


def _remove_leftovers(job: Job) -> None:
    """Temporary files an interrupted run left beside this job's outputs (hidden, never complete)."""
    for method in job.methods:
        outputs = job.outputs(method)
        for target in (getattr(outputs, f.name) for f in fields(outputs)):  # every kind of output
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

def start_client(workers: int | None = None, scheduler: str | None = None, threads: int | None = None,
                 progress: bool = True):
    """A Dask client: on an existing scheduler's address, or on a new local cluster of processes
    (in a helper process of its own, see ``cluster.py``), shown starting."""
    try:
        from distributed import Client
    except ImportError as err:
        raise CohortError("g3dvit bids and g3dvit batch run on Dask: pip install 'napari-g3dvit[cluster]'") from err
    if scheduler:
        try:
            return Client(scheduler, timeout="30s")
        except OSError as err:
            raise CohortError(f"no Dask scheduler answers at {scheduler} ({err})") from err
    from .cluster import DetachedCluster, wait_for_workers

    cores = os.cpu_count() or 1
    workers = workers or cores
    if not hasattr(os, "killpg"):  # no process groups (Windows): the cluster in this process, as Dask makes it
        client = Client(local_cluster(workers, threads))
        client._g3dvit_in_process = client.cluster
        return client
    cluster = DetachedCluster(workers, threads or max(1, cores // workers), dashboard=_has_dashboard())
    try:
        client = Client(cluster.address, timeout="30s")
        client._g3dvit_cluster = cluster
        client._g3dvit_dashboard = cluster.dashboard_link
        wait_for_workers(client, workers, show=progress)
    except BaseException:
        _quiet_distributed()
        cluster.stop_now()
        raise
    return client


def local_cluster(workers: int | None = None, threads: int | None = None, dashboard: bool = True):
    """Worker processes on this machine, one task at a time each, sharing the cores between them.

    workers: how many (None: one per core; 0: none yet, ``scale`` adds them); threads: torch /
    OpenMP threads per worker (default: the cores divided among the workers); Dask would
    otherwise start each worker with one OpenMP thread.
    """
    from distributed import LocalCluster

    cores = os.cpu_count() or 1
    count = cores if workers is None else workers
    threads = str(threads or max(1, cores // max(count, 1)))
    # Dask's workers return freed memory to the system at once (a 64 kB trim threshold), which
    # costs torch's large activations page faults on every batch: 128 MB keeps them reusable
    return LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                        dashboard_address=":8787" if dashboard and _has_dashboard() else None,
                        env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                             "MALLOC_TRIM_THRESHOLD_": str(128 << 20)})


def _has_dashboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


def _quiet_distributed() -> None:
    """Tasks cancelled and connections closed on the way out are expected: not worth a warning."""
    import logging

    for name in ("distributed", "distributed.client", "distributed.core", "distributed.comm", "tornado",
                 "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def close_client(client, interrupted: bool = False) -> None:
    """Close the client, and the local cluster it started (at once after an interrupt)."""
    _quiet_distributed()
    cluster = getattr(client, "_g3dvit_cluster", None)
    if interrupted and cluster is not None:
        cluster.stop_now()
    try:
        client.close(timeout=5 if interrupted else 30)
    except Exception:  # the scheduler is already gone: nothing left to close
        pass
    if cluster is not None:
        cluster.close()
    in_process = getattr(client, "_g3dvit_in_process", None)
    if in_process is not None:
        in_process.close()


def warm_workers(client, model: ModelRef, threads: int | None, progress: bool = True) -> None:
    """Load the model on every worker at once, shown worker by worker (the first task would
    otherwise spend that time with the progress bar at 0)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    workers = list(client.scheduler_info(n_workers=-1).get("workers", {}))
    futures = [client.submit(warm_up, model, threads, workers=[w], allow_other_workers=False, pure=False)
               for w in workers]
    bar = tqdm(total=len(futures), desc="loading the model", unit="worker", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, bar_format="{desc}: {n}/{total} workers, {elapsed}")
    try:
        for future in as_completed(futures):
            try:
                future.result()
            except Exception:  # a model that does not load fails each input with its own message
                pass
            bar.update(1)
    finally:
        bar.close()


def _splits(jobs: Sequence[Job], workers: int) -> set:
    """Inputs to cut into chunk tasks: only when there are fewer inputs than workers (else one task
    per input keeps every worker busy, with no part files to write and read back)."""
    if len(jobs) >= workers:
        return set()
    return {id(job) for job in jobs if len(job.chunks) > 1}


def _submit(client, jobs: Sequence[Job], topic: str) -> tuple[dict, dict]:
    """Submit every task; returns ({chunk future: (job, volumes)}, {final future: job})."""
    counted, finals = {}, {}
    split = _splits(jobs, max(1, len(client.scheduler_info(n_workers=-1).get("workers", {}))))
    for job in jobs:
        if id(job) not in split:
            final = client.submit(input_task, job, topic, pure=False, retries=1)
        else:
            choice = client.submit(choose_task, job, pure=False, retries=1) if AUTO in job.methods else None
            parts = [client.submit(chunk_task, job, t0, t1, choice, pure=False, retries=1) for t0, t1 in job.chunks]
            counted.update({part: (job, t1 - t0) for part, (t0, t1) in zip(parts, job.chunks)})
            final = client.submit(finish_task, job, *parts, pure=False, retries=1)
        finals[final] = job
    return counted, finals


class _Progress:
    """The volumes bar, fed by chunk events from workers and settled when each input finishes."""

    def __init__(self, total: int, show: bool):
        import threading

        self.bar = _bar(total, show)
        self.lock = threading.Lock()
        self.counted: dict[str, int] = {}
        self.finished: set[str] = set()
        self._stop = threading.Event()
        if show:  # the elapsed time moves while the first (longest) chunks run
            threading.Thread(target=self._tick, name="g3dvit-progress", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self.lock:
                self.bar.refresh()

    def add(self, label: str, volumes: int) -> None:
        with self.lock:
            if label in self.finished:
                return
            self.counted[label] = self.counted.get(label, 0) + volumes
            self.bar.update(volumes)

    def on_event(self, event) -> None:
        _, message = event
        self.add(message["input"], int(message["volumes"]))

    def settle(self, job: Job, explained: bool) -> None:
        """An input is finished: count whatever its events did not (events may come late or not at all)."""
        with self.lock:
            label = job.input.label
            self.finished.add(label)
            rest = job.volumes - self.counted.get(label, 0)
            if explained and rest > 0:
                self.bar.update(rest)
            self.counted[label] = job.volumes

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            self.bar.close()


def run_jobs(jobs: Sequence[Job], client, progress: bool = True, report: Report | None = None) -> Report:
    """Run the jobs on ``client``'s workers; a KeyboardInterrupt cancels what has not finished."""
    import uuid

    from distributed import as_completed

    report = report or Report()
    shown = _Progress(sum(job.volumes for job in jobs), progress)
    topic = f"g3dvit-progress-{uuid.uuid4().hex}"
    client.subscribe_topic(topic, shown.on_event)
    counted, finals = _submit(client, jobs, topic)
    start = time.perf_counter()
    try:
        for future in as_completed(list(counted) + list(finals)):
            try:
                outcome = future.result()
            except Exception as err:  # a worker died too often on it, or the task could not run
                outcome = {"error": f"{type(err).__name__}: {err}"}
            if future in counted and "error" not in outcome:
                shown.add(counted[future][0].input.label, counted[future][1])
            if future in finals:
                job = finals[future]
                if "error" not in outcome:
                    report.volumes += job.volumes
                shown.settle(job, "error" not in outcome)
                _settle(report, job, outcome)
                shown.bar.set_postfix_str(f"{len(report.done)} done, {len(report.failed)} failed", refresh=False)
    except KeyboardInterrupt:
        _quiet_distributed()
        try:
            client.cancel(list(counted) + list(finals))
        except Exception:
            pass
        raise
    finally:
        try:
            client.unsubscribe_topic(topic)
        except Exception:
            pass
        shown.close()
        report.seconds += time.perf_counter() - start
    return report


def run_here(jobs: Sequence[Job], progress: bool = True, report: Report | None = None) -> Report:
    """The same work in this process, one input after the other (no Dask)."""
    report = report or Report()
    shown = _Progress(sum(job.volumes for job in jobs), progress)
    start = time.perf_counter()
    try:
        for job in jobs:
            outcome = input_task(job, lambda done, volumes: shown.add(done.input.label, volumes))
            if "error" not in outcome:
                report.volumes += job.volumes
            shown.settle(job, "error" not in outcome)
            _settle(report, job, outcome)
    finally:
        shown.close()
        report.seconds += time.perf_counter() - start
    return report


def _settle(report: Report, job: Job, outcome: dict) -> None:
    if "error" in outcome:
        report.failed.append(record_failure(Path(job.out_dir), job, outcome["error"], report))
    else:
        report.done.append(outcome)
        report.reused_chunks += outcome.get("reused_chunks", 0)


def _bar(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="vol", desc="explaining", disable=not show, file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
