"""Cohort scale: explain every file of a BIDS dataset (or a list of files) on Dask workers.

``g3dvit bids BIDS_DIR OUT_DIR participant --model M`` and ``g3dvit batch FILES --out DIR --model M``
call ``explain_cohort``; ``g3dvit bids BIDS_DIR OUT_DIR group`` calls ``group_level``. Modules:

- ``inputs``: which files, and their outputs' BIDS derivative names
- ``jobs``: settings, the model's identity, one job per input, fingerprints for resuming
- ``worker``: what a worker does (lazy reads, explain, atomic writes; the model loaded once)
- ``run``: planning, Dask submission, progress, failures
- ``group``: the group table and mean maps
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from .group import group_level
from .inputs import CohortError, Input, bids_inputs, loose_inputs
from .jobs import Settings, file_sha256, model_ref
from .run import Report

__all__ = ["explain_cohort", "group_level", "bids_inputs", "loose_inputs", "Settings", "Report", "CohortError",
           "Input"]


def _with_atlas_names(settings: Settings) -> Settings:
    """The atlas' lookup table: the one given, else one found beside the atlas; checked here, once."""
    from ..labelnames import LabelNamesError, find_names_beside, read_label_names

    names = Path(settings.atlas_names) if settings.atlas_names else find_names_beside(settings.atlas)
    if names is None:
        return settings
    try:
        read_label_names(names, image=settings.atlas)
    except LabelNamesError as err:
        raise CohortError(f"the atlas' label names cannot be used: {err}") from None
    return replace(settings, atlas_names=str(names.resolve()), atlas_names_sha256=file_sha256(names))


def explain_cohort(inputs: Sequence[Input], out_dir: str | os.PathLike, model: str | os.PathLike,
                   settings: Settings | None = None, *, config: str | os.PathLike | None = None,
                   workers: int | None = None, scheduler: str | None = None, client=None,
                   overwrite: bool = False, progress: bool = True, bids_dir: str | os.PathLike | None = None,
                   on_start=None) -> Report:
    """Explain ``inputs`` into ``out_dir``; returns a ``Report`` (``report.ok`` when none failed).

    workers: local worker processes (default: one per CPU core; 0 runs in this process without
    Dask); scheduler: the address of a running Dask scheduler instead; client: a Dask client to
    use as it is. ``on_start(client)`` is called once the workers are there (e.g. to print the
    dashboard's address).
    """
    from .inputs import check_distinct_outputs
    from .lock import output_lock
    from .run import close_client, plan, run_here, run_jobs, start_client, warm_workers, write_dataset_description

    settings = settings or Settings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir):  # a second run into this folder is refused, not interleaved
        if settings.atlas:
            atlas = Path(settings.atlas)
            if not atlas.is_file():
                raise CohortError(f"no atlas file {atlas}")
            settings = replace(settings, atlas=str(atlas.resolve()), atlas_sha256=file_sha256(atlas))
            settings = _with_atlas_names(settings)
        if client is None and scheduler is None and workers != 0 and settings.threads is None:
            cores = os.cpu_count() or 1
            settings = replace(settings, threads=max(1, cores // (workers or cores)))
        check_distinct_outputs(list(inputs), out_dir)
        ref = model_ref(model, config)
        if bids_dir is not None:
            write_dataset_description(out_dir, Path(bids_dir), ref, settings)
        report = Report()
        logs = out_dir / "logs"
        if logs.exists() and not logs.is_dir():
            report.notices.append(f"{logs} is a file, not a folder: error records of failed inputs cannot be "
                                  "written there (they are listed here); move it away to keep them")
        jobs, report.skipped, report.failed = plan(inputs, out_dir, ref, settings, overwrite=overwrite, report=report)
        if not jobs:
            return report
        if client is None and scheduler is None and workers == 0:
            return run_here(jobs, progress=progress, report=report)
        own = client is None
        interrupted = False
        try:
            client = client or start_client(workers, scheduler, settings.threads, progress=progress)
            report.dashboard = getattr(client, "_g3dvit_dashboard", None) or getattr(client, "dashboard_link", None)
            if on_start is not None:
                on_start(client)
            warm_workers(client, ref, settings.threads, progress=progress)
            return run_jobs(jobs, client, progress=progress, report=report)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if own and client is not None:
                close_client(client, interrupted=interrupted)
