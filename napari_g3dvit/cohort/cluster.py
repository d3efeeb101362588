"""A local Dask cluster that Ctrl-C in the terminal does not reach.

The terminal sends Ctrl-C (SIGINT) to every process of its foreground group, and Dask's worker
processes print tracebacks when it arrives while they start. So ``g3dvit bids/batch`` run their
local scheduler and workers in a helper process in a session of its own
(``python -m napari_g3dvit.cohort.cluster``): only the command itself gets Ctrl-C, at any moment,
and stops the helper (and with it every worker) quietly. The helper also stops when its parent
dies (its stdin closes), so a killed run leaves no workers behind. The helper inherits the run's
lock on its output folder (``lock.py``), so even the workers of a killed run are gone before
another run can take the folder. Its Dask log goes to a file.

Helper protocol: it prints one JSON line ``{"address": ..., "dashboard": ...}`` as soon as its
scheduler listens, then starts the workers; when its stdin reaches EOF (the run is over, or its
command died) it stops itself and every worker at once: no task of that run is wanted any more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class DetachedCluster:
    """The helper process running a ``LocalCluster`` (scheduler and ``workers`` worker processes)."""

    def __init__(self, workers: int, threads: int, dashboard: bool = True):
        from .lock import held_descriptors

        self.workers = workers
        self.log = Path(tempfile.mkstemp(prefix="g3dvit-dask-", suffix=".log")[1])
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "napari_g3dvit.cohort.cluster", str(workers), str(threads),
                 "1" if dashboard else "0", str(self.log)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                pass_fds=held_descriptors())
        try:
            line = self.process.stdout.readline()
            facts = json.loads(line) if line.strip() else None
        except BaseException:
            self.stop_now()
            raise
        if not facts:
            self.stop_now()
            from .inputs import CohortError

            raise CohortError(f"the local Dask cluster did not start; its log:\n{self.log_tail()}")
        self.address, self.dashboard_link = facts["address"], facts.get("dashboard")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self, timeout: float = 20.0) -> None:
        """End the cluster (the helper stops its workers when its stdin closes) and wait for it."""
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.stop_now()
        self._forget_log()

    def stop_now(self) -> None:
        """Stop the helper and every worker at once (after Ctrl-C: nothing is left to finish)."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._forget_log()

    def _forget_log(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except (OSError, ValueError, AttributeError):
                pass
        self.log.unlink(missing_ok=True)


def wait_for_workers(client, count: int, show: bool = True, timeout: float = 300.0) -> float:
    """Wait until ``count`` workers have joined, showing them join; returns the seconds waited."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    bar = tqdm(total=count, desc="starting workers", unit="worker", disable=not show, file=sys.stderr,
               dynamic_ncols=True, bar_format="{desc}: {n}/{total} ready, {elapsed}")
    try:
        while True:
            ready = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            bar.update(min(ready, count) - bar.n)
            if ready >= count:
                return time.perf_counter() - start
            if time.perf_counter() - start > timeout:
                from .inputs import CohortError

                raise CohortError(f"only {ready} of {count} local Dask workers started in {timeout:.0f} s")
            time.sleep(0.1)
    finally:
        bar.close()


def serve(workers: int, threads: int, dashboard: bool, log: str) -> None:
    """The helper's main: a local cluster until stdin closes, then every process of it stopped."""
    from .run import local_cluster

    parent = os.getppid()
    try:
        cluster = local_cluster(0, threads, dashboard=dashboard)
        print(json.dumps({"address": cluster.scheduler_address,
                          "dashboard": cluster.dashboard_link if dashboard else None}), flush=True)
        cluster.scale(workers)
        sys.stdin.buffer.read()  # EOF: the parent closed it (its run is over), or died
    finally:
        if os.getppid() != parent:  # its command died: nobody else will remove the log
            Path(log).unlink(missing_ok=True)
        os.killpg(0, signal.SIGKILL)  # the workers and this helper at once: nothing of the run goes on


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the parent decides when this stops
    serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4])
