"""Cohort throughput: a plain serial loop over ``explain`` against ``g3dvit bids`` in this process and on 1 and 2 Dask workers.

    .venv/bin/python benchmarks/bench_cohort.py [--subjects 8] [--timepoints 20] [--device cpu]

A synthetic BIDS dataset (subjects x 1 run x timepoints, 3 mm voxels) is explained with two
models: a small ViT for which reading and writing NIfTI dominate ("I/O-bound") and the
published fMRI-size ViT (dim 1024, depth 6, 90^3 input; "compute-bound", on fewer volumes).
The serial loop is what a script would do: load each run whole, explain it, save the map.
The ``--workers 0`` row runs the cohort path in this process (what ``g3dvit batch --workers 0``
does); the Dask rows run it on a local cluster whose workers were started (and torch imported)
before the clock starts. Every cohort row hashes and loads the model inside the timed run, as
the serial script loads its model inside its own; each reads its inputs chunk by chunk (the next
chunk decompressed in a thread while this one is explained) and compresses the maps in another
thread, then writes tables and sidecars and renames each output's files together. Read / explain
/ write shares are each thread's busy time from the sidecars (they overlap, so they can add up to
more than the wall time: the "busy / wall" column says by how much); peak memory per worker is
each worker's peak resident size. Memory of a long run:
a fresh process explains one 4D run chunk by chunk and reports how far its peak resident size
grew beyond the model's warm-up, beside the run's and one chunk's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

VOLUMES_IN_STUDY = 97_000  # 690 resting-state runs of about 140 timepoints


def write_dataset(root: Path, subjects: int, timepoints: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.9.0"}))
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = -1.5 * np.array(shape)
    base = rng.normal(1000, 100, size=shape).astype(np.float32)
    for s in range(1, subjects + 1):
        folder = root / f"sub-{s:02d}" / "func"
        folder.mkdir(parents=True, exist_ok=True)
        data = base[..., None] + rng.normal(0, 10, size=(*shape, timepoints)).astype(np.float32)
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm", "sec")
        image.header["pixdim"][4] = 2.0
        nib.save(image, folder / f"sub-{s:02d}_task-rest_run-1_bold.nii.gz")
    return root


def save_vit(path: Path, vit: dict) -> Path:
    import torch

    import napari_g3dvit as g3d
    from napari_g3dvit.models.loading import ViTClassifier
    from napari_g3dvit.models.vit_pytorch3d import import_vit3d

    torch.manual_seed(0)
    module = import_vit3d().ViT(**vit)
    with torch.no_grad():  # trained-looking LayerNorms (fresh ones make g3dvit maps exactly zero)
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    config = {"vit": vit, "input_orientation": "RAS", "preprocessing": {"normalize": "zscore"}}
    g3d.save_model(ViTClassifier(module, None, config), path, config)
    return path


def serial_loop(bids: Path, model_path: Path, out: Path, device: str) -> dict:
    """Load each run whole, explain it, save the map: the plain script."""
    import nibabel as nib

    import napari_g3dvit as g3d

    start = time.perf_counter()  # the script loads its model too, as each worker does
    model = g3d.load_model(model_path)
    out.mkdir(parents=True, exist_ok=True)
    times = {"read_s": 0.0, "explain_s": 0.0, "write_s": 0.0}
    volumes = 0
    for path in sorted(bids.rglob("*_bold.nii.gz")):
        t = time.perf_counter()
        image = nib.load(path)
        series = np.moveaxis(image.get_fdata(dtype=np.float32), -1, 0)
        times["read_s"] += time.perf_counter() - t
        t = time.perf_counter()
        heat = g3d.explain(model, series, device=device, batch_size=8).heatmap
        times["explain_s"] += time.perf_counter() - t
        t = time.perf_counter()
        nib.save(nib.Nifti1Image(np.moveaxis(heat, 0, -1), image.affine, image.header), out / path.name)
        times["write_s"] += time.perf_counter() - t
        volumes += len(series)
    return {"seconds": time.perf_counter() - start, "volumes": volumes, **times, "peak_mb": None}


def cohort_run(bids: Path, model_path: Path, out: Path, workers: int, device: str) -> dict:
    """``g3dvit bids`` on ``workers`` local Dask workers, or in this process for 0."""
    from distributed import Client

    from napari_g3dvit.cohort import Settings, bids_inputs, explain_cohort
    from napari_g3dvit.cohort.group import sidecars
    from napari_g3dvit.cohort.run import local_cluster

    cores = os.cpu_count() or 1
    if workers == 0:
        start = time.perf_counter()
        report = explain_cohort(bids_inputs(bids), out, model_path, Settings(methods=("g3dvit",), device=device),
                                workers=0, progress=False)
        seconds = time.perf_counter() - start
    else:
        with local_cluster(workers, dashboard=False) as cluster, Client(cluster) as client:
            client.run(lambda: __import__("napari_g3dvit.cohort.worker") and __import__("torch"))  # warm, untimed
            settings = Settings(methods=("g3dvit",), device=device, threads=max(1, cores // workers))
            start = time.perf_counter()
            report = explain_cohort(bids_inputs(bids), out, model_path, settings, client=client, progress=False)
            seconds = time.perf_counter() - start
    if not report.ok:
        raise RuntimeError(report.summary())
    timings = [json.loads(p.read_text())["timings"] for p in sidecars(out)]
    return {"seconds": seconds, "volumes": report.volumes,
            **{k: sum(t[k] for t in timings) for k in ("read_s", "explain_s", "write_s")},
            "peak_mb": max(t["peak_rss_mb"] for t in timings), "workers": max(workers, 1)}


MEMORY_PROBE = """
import json, sys, threading, time
from pathlib import Path
import numpy as np, nibabel as nib, psutil
import napari_g3dvit as g3d
from napari_g3dvit.cohort import Settings, explain_cohort, loose_inputs
model, warm, run, out, chunk, how = sys.argv[1:7]
me, peak, running = psutil.Process(), [0], [True]
def sample():
    while running[0]:
        peak[0] = max(peak[0], me.memory_info().rss)
        time.sleep(0.002)
explain_cohort(loose_inputs([warm]), Path(out) / "warm", model, Settings(chunk=int(chunk)), workers=0, progress=False)
before = me.memory_info().rss
threading.Thread(target=sample, daemon=True).start()
if how == "chunked":
    explain_cohort(loose_inputs([run]), Path(out) / "run", model, Settings(chunk=int(chunk)), workers=0, progress=False)
else:  # the plain script: the whole run in memory, explained, saved
    image = nib.load(run)
    heat = g3d.explain(g3d.load_model(model), np.moveaxis(image.get_fdata(dtype=np.float32), -1, 0), batch_size=8)
    nib.save(nib.Nifti1Image(np.moveaxis(heat.heatmap, 0, -1), image.affine), Path(out) / "whole.nii.gz")
running[0] = False
time.sleep(0.05)
print(json.dumps({"growth_mb": (peak[0] - before) / 2**20}))
"""


def memory_of_a_long_run(folder: Path, model_path: Path, shape, timepoints: int, chunk: int) -> dict:
    """Peak resident growth (sampled every 2 ms) of a fresh process explaining one long run."""
    long_run = write_dataset(folder / "long", 1, timepoints, shape, seed=3)
    warm = write_dataset(folder / "warm", 1, 2, shape, seed=4)
    run = next(long_run.rglob("*_bold.nii.gz"))
    (folder / "memory_out").mkdir(exist_ok=True)
    growth = {}
    for how in ("chunked", "whole"):
        child = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(model_path),
                                str(next(warm.rglob("*_bold.nii.gz"))), str(run), str(folder / "memory_out"),
                                str(chunk), how], capture_output=True, text=True)
        if child.returncode:
            raise RuntimeError(child.stderr)
        growth[how] = json.loads(child.stdout.strip().splitlines()[-1])["growth_mb"]
    frame_mb = np.prod(shape) * 4 / 2**20
    return {"run_mb": frame_mb * timepoints, "chunk_mb": frame_mb * chunk, **growth}


def row(name: str, config: str, result: dict, serial: dict | None) -> str:
    rate = result["volumes"] / result["seconds"]
    busy = result["read_s"] + result["explain_s"] + result["write_s"]
    shares = "/".join(f"{100 * result[k] / busy:.0f}" for k in ("read_s", "explain_s", "write_s"))
    overlap = f"{busy / (result['seconds'] * result.get('workers', 1)):.2f}"
    ratio = f"{rate / (serial['volumes'] / serial['seconds']):.2f}x" if serial else "1.00x"
    peak = f"{result['peak_mb']:.0f}" if result["peak_mb"] else "-"
    return (f"| {name} | {config} | {result['volumes']} | {result['seconds']:.1f} | {rate:.2f} | {ratio} | {shares} "
            f"| {overlap} | {peak} |")


def main() -> None:
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--timepoints", type=int, default=100)
    parser.add_argument("--compute-subjects", type=int, default=4, help="subjects for the fMRI-size model")
    parser.add_argument("--compute-timepoints", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-compute", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="cohort rows to run (0: in process)")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    import torch

    folder = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    small_shape = (56, 72, 56)
    models = [("small ViT (dim 32, depth 1), 56x72x56", small_shape, args.subjects, args.timepoints,
               dict(image_size=(72, 56), image_patch_size=(8, 8), frames=56, frame_patch_size=8, num_classes=2,
                    dim=32, depth=1, heads=2, dim_head=16, mlp_dim=64, channels=1, pool="cls"))]
    if not args.skip_compute:
        models.append(("fMRI-size ViT (dim 1024, depth 6), 90^3", (90, 90, 90), args.compute_subjects,
                       args.compute_timepoints,
                       dict(image_size=90, image_patch_size=9, frames=90, frame_patch_size=9, num_classes=2,
                            dim=1024, depth=6, heads=8, dim_head=64, mlp_dim=2048, channels=1, pool="cls")))
    print(f"cohort throughput, {os.cpu_count()} CPU cores, device {args.device}, torch {torch.__version__}\n")
    print("| model | run | volumes | seconds | volumes/s | vs serial | read/explain/write % | busy / wall "
          "| peak MB per worker |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    rates = {}
    for index, (name, shape, subjects, timepoints, vit) in enumerate(models):
        bids = write_dataset(folder / f"bids{index}", subjects, timepoints, shape)
        model_path = save_vit(folder / f"model{index}.safetensors", vit)
        serial = serial_loop(bids, model_path, folder / f"serial{index}", args.device)
        print(row(name, "serial loop (1 process, all cores)", serial, None), flush=True)
        for workers in args.workers:
            result = cohort_run(bids, model_path, folder / f"cohort{index}-{workers}", workers, args.device)
            rates[(index, workers)] = result["volumes"] / result["seconds"]
            how = "--workers 0 (this process)" if workers == 0 else f"{workers} worker{'s' if workers > 1 else ''}"
            print(row(name, f"g3dvit bids, {how}", result, serial), flush=True)
    print(f"\nprojected wall time for {VOLUMES_IN_STUDY:,} volumes (from the 2-worker rate per worker, "
          "one core per worker):")
    for index, (name, *_rest) in enumerate(models):
        if (index, 2) not in rates:
            continue
        per_worker = rates[(index, 2)] / 2
        hours = {n: VOLUMES_IN_STUDY / (per_worker * n) / 3600 for n in (2, 16, 64)}
        print(f"- {name}: " + ", ".join(f"{n} workers {h:.1f} h" for n, h in hours.items()))
    if args.skip_memory:
        return
    memory = memory_of_a_long_run(folder, folder / "model0.safetensors", small_shape, 120, 16)
    print(f"\nmemory of one 120-timepoint run (small ViT): the run is {memory['run_mb']:.0f} MB, a chunk of 16 "
          f"timepoints {memory['chunk_mb']:.0f} MB; peak resident growth while explaining it: "
          f"g3dvit batch (chunks of 16) {memory['chunked']:.0f} MB, the plain script (whole run) "
          f"{memory['whole']:.0f} MB")


if __name__ == "__main__":
    main()
