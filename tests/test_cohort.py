"""g3dvit bids / g3dvit batch: a synthetic BIDS tree explained on a real Dask LocalCluster.

Faults are injected for real: the client process killed mid-run, a worker process killed
mid-run, corrupt and foreign inputs among good ones, out-of-memory errors from the model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import napari_g3dvit as g3d
from napari_g3dvit.cli import main
from napari_g3dvit.cohort import Settings, bids_inputs, explain_cohort, group_level, loose_inputs
from napari_g3dvit.cohort.jobs import file_sha256
from napari_g3dvit.cohort.writing import read_table
from napari_g3dvit.models.loading import ViTClassifier
from napari_g3dvit.runner import labels_on_grid
from napari_g3dvit.timecourse import read_table as read_course
from napari_g3dvit.timecourse import time_courses

from conftest import TINY, make_vit

distributed = pytest.importorskip("distributed")

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
          "class_names": ["left", "middle", "right"], "input_orientation": "RAS"}
AFFINE = np.array([[3.0, 0, 0, -18], [0, 3, 0, -12], [0, 0, 3, -24], [0, 0, 0, 1]])


def save_model(folder: Path) -> Path:
    path = folder / "tiny.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, CONFIG), path, CONFIG)
    return path


def write_run(path: Path, timepoints: int | None, seed: int, affine=AFFINE, shape=(12, 8, 16)) -> Path:
    """A 4D run (x, y, z, t) with TR 2 s, or a 3D volume when ``timepoints`` is None."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=shape + ((timepoints,) if timepoints else ())).astype(np.float32)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    if timepoints:
        image.header["pixdim"][4] = 2.0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def write_bids(root: Path, subjects=("01", "02", "03"), timepoints: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "toy", "BIDSVersion": "1.9.0"}))
    for i, sub in enumerate(subjects):
        write_run(root / f"sub-{sub}" / "ses-1" / "func" / f"sub-{sub}_ses-1_task-motor_run-1_bold.nii.gz",
                  timepoints, seed=i)
        write_run(root / f"sub-{sub}" / "ses-1" / "anat" / f"sub-{sub}_ses-1_T1w.nii.gz", None, seed=100 + i)
    return root


def visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                           p.relative_to(folder).parts))


@pytest.fixture(scope="module")
def cluster():
    """One real local cluster (2 worker processes) for the module: (client, scheduler address)."""
    from distributed import Client, LocalCluster

    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(local)
    yield client, local.scheduler_address
    client.close()
    local.close()


def expected_heat(model_path: Path, source: Path, method: str = "g3dvit") -> np.ndarray:
    """The library's own map of the whole file, in one call, as (x, y, z[, t])."""
    model = g3d.load_model(model_path)
    data = np.asarray(nib.load(source).dataobj, dtype=np.float32)
    volume = np.moveaxis(data, -1, 0) if data.ndim == 4 else data
    heat = g3d.explain(model, volume, method=method).heatmap
    return np.moveaxis(heat, 0, -1) if data.ndim == 4 else heat


def test_participant_and_group_levels_on_a_local_cluster(tmp_path, cluster):
    client, _ = cluster
    model = save_model(tmp_path)
    bids = write_bids(tmp_path / "bids")
    atlas = tmp_path / "atlas.nii.gz"  # two labels on a finer grid in the same world space
    labels = np.zeros((24, 16, 32), np.uint8)
    labels[:12, :, :] = 1
    labels[12:, 8:, 16:] = 2
    fine = np.diag([1.5, 1.5, 1.5, 1.0])
    fine[:3, 3] = AFFINE[:3, 3] - 0.75  # two fine voxels straddle each coarse voxel's centre
    nib.save(nib.Nifti1Image(labels, fine), atlas)
    events = bids / "sub-01/ses-1/func/sub-01_ses-1_task-motor_run-1_events.tsv"
    events.write_text("onset\tduration\ttrial_type\n2\t4\ttap\n")
    out = tmp_path / "out"
    inputs = bids_inputs(bids, ["01", "sub-02"])  # both spellings of a participant label
    assert [i.entities["sub"] for i in inputs] == ["01", "02"]
    settings = Settings(methods=("g3dvit", "hirescam"), chunk=4, atlas=str(atlas))
    loads = lambda: client.run(lambda: __import__("napari_g3dvit.cohort.worker", fromlist=["x"]).model_loads)
    before = loads()
    report = explain_cohort(inputs, out, model, settings, client=client, progress=False, bids_dir=bids)
    assert report.ok and len(report.done) == 2 and report.volumes == 12

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "napari-g3dvit"
    assert description["SourceDatasets"][0]["URL"] == bids.resolve().as_uri()
    for sub in ("01", "02"):
        source = bids / f"sub-{sub}/ses-1/func/sub-{sub}_ses-1_task-motor_run-1_bold.nii.gz"
        for method, desc in (("g3dvit", "g3dvit"), ("hirescam", "hirescam")):
            stem = out / f"sub-{sub}/ses-1/func/sub-{sub}_ses-1_task-motor_run-1_desc-{desc}"
            heat = nib.load(f"{stem}_heatmap.nii.gz")
            assert heat.shape == (12, 8, 16, 6)  # 4D stays 4D
            np.testing.assert_allclose(heat.affine, nib.load(source).affine)
            assert heat.header.get_zooms()[3] == 2.0
            # chunks of 4 timepoints on two workers give the same map as one call on the whole run
            np.testing.assert_allclose(heat.get_fdata(), expected_heat(model, source, method), atol=1e-5)
            sidecar = json.loads(Path(f"{stem}_heatmap.json").read_text())
            assert sidecar["model"]["sha256"] == file_sha256(model)
            assert sidecar["settings"]["method"] == method and sidecar["timepoints"] == 6
            assert len(sidecar["probabilities"]) == 6 and len(sidecar["probabilities"][0]) == 3
            assert sidecar["timings"]["chunks"] == 2 and sidecar["timings"]["explain_s"] > 0
            regions = read_table(Path(f"{stem}_regions.tsv"))
            assert {r["label"] for r in regions} == {"1", "2"} and len(regions) == 12
            # the table's heat is the map's mean over the atlas' voxels (label 1: the first 6 x-voxels)
            t0 = [r for r in regions if r["timepoint"] == "0" and r["label"] == "1"][0]
            assert float(t0["mean_heat"]) == pytest.approx(heat.get_fdata()[:6, :, :, 0].mean(), rel=1e-4)
    # the run's time course is the Time course dock's table: heat in the atlas' labels, design from events
    source = bids / "sub-01/ses-1/func/sub-01_ses-1_task-motor_run-1_bold.nii.gz"
    series = np.moveaxis(nib.load(source).get_fdata(dtype=np.float32), -1, 0)
    region = labels_on_grid(labels, fine, (12, 8, 16), AFFINE)
    expected = time_courses(g3d.explain(g3d.load_model(model), series, method="g3dvit"), region, tr=2.0,
                            events=events)
    table = read_course(out / "sub-01/ses-1/func/sub-01_ses-1_task-motor_run-1_desc-g3dvit_timeseries.tsv")
    np.testing.assert_allclose(np.asarray(table["heat_in_region"], float), expected.heat, atol=1e-5)
    np.testing.assert_allclose(np.asarray(table["probability"], float), expected.probability, atol=1e-5)
    assert table["design"] == ["0", "1", "1", "0", "0", "0"] == [str(d) for d in expected.design]
    assert not (out / ".g3dvit-parts").exists()
    after = loads()
    assert all(after[w] - before.get(w, 0) <= 1 for w in after)  # loaded once per worker, not per task

    summary = group_level(out)
    rows = read_table(out / "group" / "timepoints.tsv")
    assert len(rows) == 2 * 6 * 2 and summary["inputs"] == 4
    first = rows[0]
    assert first["subject"] == "01" and first["session"] == "1" and first["run"] == "1"
    assert {"p_left", "p_middle", "p_right", "heat_1", "heat_2"} <= set(first)  # names as the config spells them
    assert "error" not in first and "warning" not in first  # columns no row fills say nothing: left out
    assert first["time_s"] == "0" and rows[1]["time_s"] == "2"
    assert summary["mean_maps"]["g3dvit"]
    # every map's name follows BIDS: key-label pairs of known entities (labels alphanumeric), a suffix
    bids_name = re.compile(r"^(?:(?:sub|ses|task|acq|ce|rec|dir|run|echo|space|res|den)-[A-Za-z0-9]+_)*"
                           r"desc-[A-Za-z0-9]+_heatmap\.(?:nii\.gz|json)$")
    maps = [p for p in out.rglob("*heatmap*") if p.is_file()]
    assert maps and all(bids_name.match(p.name) for p in maps), [p.name for p in maps if not bids_name.match(p.name)]
    for method, made in summary["mean_maps"].items():
        for name, facts in made.items():  # desc-<method><Class>, the class named exactly in its sidecar
            assert facts["file"] == f"desc-{method}{name.capitalize()}_heatmap.nii.gz"
            sidecar = json.loads((out / "group" / facts["file"].replace(".nii.gz", ".json")).read_text())
            assert sidecar["class_name"] == name and name in CONFIG["class_names"]
    # the time course says nothing constant: with an atlas it has the heat in the labels
    course = read_course(out / "sub-02/ses-1/func/sub-02_ses-1_task-motor_run-1_desc-g3dvit_timeseries.tsv")
    assert "heat_in_region" in course and "heat_peak" not in course


def test_a_rerun_skips_complete_outputs_and_overwrite_redoes_them(tmp_path, cluster):
    _, address = cluster
    model = save_model(tmp_path)
    bids = write_bids(tmp_path / "bids", subjects=("01", "02"))
    out = tmp_path / "out"
    args = ["bids", str(bids), str(out), "participant", "--model", str(model), "--scheduler", address, "--quiet"]
    assert main(args) == 0  # auto by default
    sidecar = out / "sub-01/ses-1/func/sub-01_ses-1_task-motor_run-1_desc-auto_heatmap.json"
    first = sidecar.stat().st_mtime_ns
    assert main(args) == 0
    assert sidecar.stat().st_mtime_ns == first  # same settings and model: skipped
    assert main(args + ["--threshold", "20"]) == 0
    assert sidecar.stat().st_mtime_ns != first  # other settings: redone
    second = sidecar.stat().st_mtime_ns
    assert main(args + ["--threshold", "20", "--overwrite"]) == 0
    assert sidecar.stat().st_mtime_ns != second


def test_a_killed_run_leaves_nothing_half_written_and_resumes(tmp_path, cluster):
    _, address = cluster
    model = save_model(tmp_path)
    bids = write_bids(tmp_path / "bids", subjects=tuple(f"{i:02d}" for i in range(1, 11)), timepoints=20)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "napari_g3dvit.cli", "bids", str(bids), str(out), "participant", "--model",
           str(model), "--workers", "2", "--chunk", "2", "--batch-size", "1", "--method", "g3dvit", "hirescam",
           "--quiet"]
    child = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not list(out.rglob("*_heatmap.json")) and time.time() < deadline:
            time.sleep(0.05)
        assert list(out.rglob("*_heatmap.json")), "no output appeared before the deadline"
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the client, its scheduler and its workers, at once
        child.wait()
    finished = list(out.rglob("*_heatmap.json"))
    assert len(finished) < 20, "the run finished before it was killed; the test proves nothing"
    for sidecar in finished:  # whatever has a sidecar is complete
        heat = nib.load(str(sidecar).replace(".json", ".nii.gz"))
        assert heat.get_fdata().shape == (12, 8, 16, 20)

    assert main(["bids", str(bids), str(out), "participant", "--model", str(model), "--scheduler", address,
                 "--chunk", "2", "--method", "g3dvit", "hirescam", "--quiet"]) == 0
    maps = sorted(out.rglob("*_heatmap.nii.gz"))
    maps = [m for m in maps if "group" not in m.parts]
    assert len(maps) == 20 and len({m.name for m in maps}) == 20  # every output once
    for m in maps:
        sidecar = json.loads(Path(str(m).replace(".nii.gz", ".json")).read_text())
        assert sidecar["timepoints"] == 20 and nib.load(m).get_fdata().shape == (12, 8, 16, 20)
    leftovers = [p for p in out.rglob(".*") if "group" not in p.parts]
    assert leftovers == []


def test_a_worker_killed_mid_run_has_its_tasks_redone(tmp_path, cluster):
    client, _ = cluster
    model = save_model(tmp_path)
    bids = write_bids(tmp_path / "bids", subjects=tuple(f"{i:02d}" for i in range(1, 5)), timepoints=16)
    out = tmp_path / "out"
    settings = Settings(methods=("g3dvit",), chunk=2, batch_size=1)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault(
        "report", explain_cohort(bids_inputs(bids), out, model, settings, client=client, progress=False)))
    thread.start()
    deadline = time.time() + 60
    while not list(out.rglob(".*_heatmap.nii.gz.*")) and time.time() < deadline:  # a map being written
        time.sleep(0.02)
    assert not list(out.rglob("*_heatmap.json")), "an input finished before the kill; the test proves less"
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=180)
    report = outcome["report"]
    assert report.ok and len(report.done) == 4
    assert victim not in client.run(os.getpid).values()  # that process really died
    maps = [m for m in out.rglob("*_heatmap.nii.gz")]
    assert len(maps) == 4
    for m in maps:
        source = bids / json.loads(Path(str(m).replace(".nii.gz", ".json")).read_text())["Sources"][0]
        np.testing.assert_allclose(nib.load(m).get_fdata(), expected_heat(model, source), atol=1e-5)
    assert not (out / ".g3dvit-parts").exists()


def test_corrupt_and_foreign_inputs_are_recorded_and_the_run_goes_on(tmp_path, cluster):
    _, address = cluster
    model = save_model(tmp_path)
    folder = tmp_path / "in"
    good = write_run(folder / "good.nii.gz", 4, seed=1)
    truncated = write_run(folder / "truncated.nii.gz", 6, seed=2)
    truncated.write_bytes(truncated.read_bytes()[:-3000])
    write_run(folder / "wrong_size.nii.gz", None, seed=3, shape=(20, 20, 20))
    nib.save(nib.Nifti1Image(np.zeros((12, 8), np.float32), AFFINE), folder / "flat.nii.gz")
    (folder / "notes.nii.gz").write_text("not an image")
    out = tmp_path / "out"
    code = main(["batch", str(folder / "*.nii.gz"), "--out", str(out), "--model", str(model),
                 "--scheduler", address, "--method", "g3dvit", "--quiet"])
    assert code == 1  # not every input was done
    assert (out / "good_desc-g3dvit_heatmap.nii.gz").is_file()
    errors = {p.name: json.loads(p.read_text())["error"] for p in (out / "logs").glob("*_error.json")}
    assert set(errors) == {f"{n}_desc-g3dvit_error.json" for n in ("truncated", "wrong_size", "flat", "notes")}
    assert "truncated" in errors["truncated_desc-g3dvit_error.json"]
    assert "20" in errors["wrong_size_desc-g3dvit_error.json"]
    assert not list(out.glob("truncated*")) and not list(out.glob("wrong_size*"))
    rows = read_table(out / "group" / "timepoints.tsv")
    assert len([r for r in rows if r["error"] == "n/a"]) == 4
    assert len([r for r in rows if r["error"] != "n/a"]) == 4
    # fixed and rerun: the error record goes, the output comes
    write_run(folder / "truncated.nii.gz", 6, seed=2)
    for name in ("wrong_size", "flat", "notes"):
        (folder / f"{name}.nii.gz").unlink()
    assert main(["batch", str(folder / "*.nii.gz"), "--out", str(out), "--model", str(model),
                 "--workers", "0", "--method", "g3dvit", "--quiet"]) == 0
    assert (out / "truncated_desc-g3dvit_heatmap.nii.gz").is_file()
    assert not (out / "logs" / "truncated_desc-g3dvit_error.json").exists()


def test_out_of_memory_is_retried_with_smaller_batches(tmp_path):
    import torch

    from napari_g3dvit.cohort import worker
    from napari_g3dvit.cohort.jobs import model_ref

    model = save_model(tmp_path)
    source = write_run(tmp_path / "in" / "run.nii.gz", 8, seed=4)
    loaded, _ = worker.loaded_model(model_ref(model))  # the model this process's tasks will use

    def refuse_big_batches(_module, args):
        if args[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = loaded.model.register_forward_pre_hook(refuse_big_batches)
    try:
        report = explain_cohort(loose_inputs([str(source)]), tmp_path / "out", model,
                                Settings(methods=("g3dvit",), batch_size=8, chunk=8), workers=0, progress=False)
    finally:
        hook.remove()
    assert report.ok
    sidecar = json.loads((tmp_path / "out" / "run_desc-g3dvit_heatmap.json").read_text())
    assert sidecar["timings"]["batch_sizes"] == [2]
    np.testing.assert_allclose(nib.load(tmp_path / "out" / "run_desc-g3dvit_heatmap.nii.gz").get_fdata(),
                               expected_heat(model, source), atol=1e-5)


def test_batch_names_and_bad_options(tmp_path, capsys):
    model = save_model(tmp_path)
    a = write_run(tmp_path / "a" / "scan.nii.gz", None, seed=1)
    write_run(tmp_path / "b" / "scan.nii.gz", None, seed=2)
    assert main(["batch", str(a), "--out", str(tmp_path / "out"), "--model", str(model), "--workers", "0",
                 "--method", "auto", "gradcam-elementwise", "--quiet"]) == 0
    assert (tmp_path / "out" / "scan_desc-auto_heatmap.nii.gz").is_file()
    assert (tmp_path / "out" / "scan_desc-gradcamelementwise_heatmap.nii.gz").is_file()
    auto = json.loads((tmp_path / "out" / "scan_desc-auto_heatmap.json").read_text())
    assert auto["auto"]["chosen"] and auto["method_used"] != "auto"
    # without --method: auto and the target the model's config recommends (what the widget preselects)
    config = {**CONFIG, "recommended_explanation": {"method": "hirescam", "layer": "vit.transformer.layers.0.0.norm",
                                                    "target": CONFIG["class_names"][2]}}
    g3d.save_model(ViTClassifier(make_vit(), None, config), tmp_path / "rec.safetensors", config)
    assert main(["batch", str(a), "--out", str(tmp_path / "rec"), "--model", str(tmp_path / "rec.safetensors"),
                 "--workers", "0", "--quiet"]) == 0
    recommended = json.loads((tmp_path / "rec" / "scan_desc-auto_heatmap.json").read_text())
    assert recommended["settings"]["target"] == 2 and recommended["explained_class"] == [2]
    assert any(label.startswith("hirescam @ vit.transformer.layers.0.0.norm")
               for label in recommended["auto"]["scores"])  # the recommended method is one of the candidates
    assert main(["batch", str(tmp_path / "*" / "scan.nii.gz"), "--out", str(tmp_path / "o2"), "--model",
                 str(model), "--workers", "0"]) == 2
    assert "would write the same outputs" in capsys.readouterr().err
    assert main(["bids", str(tmp_path), str(tmp_path / "o3"), "participant", "--model", str(model)]) == 2
    assert "not a BIDS dataset" in capsys.readouterr().err
    bids = write_bids(tmp_path / "bids", subjects=("01",))
    assert main(["bids", str(bids), str(tmp_path / "o4"), "participant", "--model", str(model),
                 "--participant-label", "07"]) == 2
    assert "no participant sub-07" in capsys.readouterr().err
    anat = bids_inputs(bids, suffix="T1w")
    assert [i.outputs(tmp_path, "g3dvit").heatmap.relative_to(tmp_path).as_posix() for i in anat] == [
        "sub-01/ses-1/anat/sub-01_ses-1_desc-g3dvit_heatmap.nii.gz"]


def test_long_lived_workers_load_an_edited_config_and_atlas_anew(tmp_path, cluster):
    """Workers that stay up between runs (a --scheduler cluster, or this process with --workers 0)."""
    _, address = cluster
    model = save_model(tmp_path)
    for i in range(4):  # enough inputs that every worker of the cluster explains some, run after run
        write_run(tmp_path / "in" / f"run{i}.nii.gz", 2, seed=5 + i)
    atlas = tmp_path / "atlas.nii.gz"
    labels = np.zeros((12, 8, 16), np.uint8)
    labels[:6], labels[6:] = 1, 2
    nib.save(nib.Nifti1Image(labels, AFFINE), atlas)

    def run(where: list[str], out: Path) -> tuple[set, set]:
        assert main(["batch", str(tmp_path / "in" / "*.nii.gz"), "--out", str(out), "--model", str(model), *where,
                     "--atlas", str(atlas), "--quiet"]) == 0
        names = {tuple(json.loads(p.read_text())["class_names"]) for p in out.glob("*_heatmap.json")}
        found = {r["label"] for p in out.glob("*_regions.tsv") for r in read_table(p)}
        return names, found

    for where, out in ((["--scheduler", address], tmp_path / "cluster"), (["--workers", "0"], tmp_path / "here")):
        labels[:6], labels[6:] = 1, 2
        nib.save(nib.Nifti1Image(labels, AFFINE), atlas)
        config = json.loads(model.with_suffix(".json").read_text())
        config["class_names"] = ["left", "middle", "right"]
        model.with_suffix(".json").write_text(json.dumps(config))
        assert run(where, out) == ({("left", "middle", "right")}, {"1", "2"})
        # the same files, edited in place: other class names in the config, other labels in the atlas
        config["class_names"] = ["front", "centre", "back"]
        model.with_suffix(".json").write_text(json.dumps(config))
        nib.save(nib.Nifti1Image(labels + 2, AFFINE), atlas)
        assert run(where, out) == ({("front", "centre", "back")}, {"3", "4"})  # redone with the edited files


def _stderr_reader(child) -> list[str]:
    """Collect a child's stderr as it comes (a list that fills in a thread)."""
    got: list[str] = []

    def read() -> None:
        for chunk in iter(lambda: os.read(child.stderr.fileno(), 4096), b""):
            got.append(chunk.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return got


def test_ctrl_c_at_start_up_and_mid_run_ends_with_one_line(tmp_path):
    """A real SIGINT to the command's whole process group, as a terminal's Ctrl-C sends it."""
    import uuid

    import psutil

    model = save_model(tmp_path)
    bids = write_bids(tmp_path / "bids", subjects=("01", "02", "03", "04"), timepoints=30)
    mark = uuid.uuid4().hex
    env = {**os.environ, "G3DVIT_TEST_RUN": mark,
           "PYTHONPATH": str(Path(__file__).parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for moment in ("start-up", "mid-run"):
        out = tmp_path / f"out-{moment}"
        child = subprocess.Popen([sys.executable, "-m", "napari_g3dvit.cli", "bids", str(bids), str(out),
                                  "participant", "--model", str(model), "--workers", "2", "--batch-size", "1",
                                  "--chunk", "2"], start_new_session=True, stderr=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, env=env)
        err = _stderr_reader(child)
        deadline = time.time() + 120
        wanted = "starting workers" if moment == "start-up" else "explaining"
        while wanted not in "".join(err) and time.time() < deadline:
            time.sleep(0.02)
        if moment == "mid-run":  # a map is being written
            while not list(out.rglob(".*_heatmap.nii.gz.*")) and time.time() < deadline:
                time.sleep(0.02)
        assert wanted in "".join(err) and child.poll() is None, "".join(err)
        os.killpg(child.pid, signal.SIGINT)
        child.wait(timeout=60)
        time.sleep(0.5)  # let the threads that filled ``err`` finish
        said = "".join(err)
        assert child.returncode == 130, said
        assert "Traceback" not in said and "Error" not in said and "Warning" not in said, said
        assert said.rstrip().endswith("Run the same command again to do the rest."), said[-500:]
        for sidecar in out.rglob("*_heatmap.json"):  # whatever finished is whole
            assert nib.load(str(sidecar).replace(".json", ".nii.gz")).get_fdata().shape == (12, 8, 16, 30)
        time.sleep(1.0)
        left = [p.pid for p in psutil.process_iter() if _environ(p).get("G3DVIT_TEST_RUN") == mark]
        assert left == [], "processes of the interrupted run are still there"


def _environ(process) -> dict:
    try:
        return process.environ()
    except Exception:  # gone meanwhile, or not ours
        return {}
