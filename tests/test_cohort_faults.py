"""g3dvit batch / bids on datasets as they are shipped: every fault here was seen to lose or mislabel
output before, and is injected for real (a full tmpfs, a second process, DataLad-style links,
truncated NIfTI-2 headers). Most run in the client process (``--workers 0``) to stay fast; the
long-lived Dask worker cases are in test_cohort.py with its cluster.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import napari_g3dvit as g3d
from napari_g3dvit.cli import main
from napari_g3dvit.cohort.writing import read_table

from test_cohort import AFFINE, expected_heat, save_model, write_run

pytest.importorskip("distributed")


def batch(*args) -> list[str]:
    # one quick method is enough for the faults here (the default, auto, is tested elsewhere)
    return ["batch", *map(str, args), "--workers", "0", "--method", "g3dvit", "--quiet"]


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_runs_differing_only_in_desc_keep_an_output_each(tmp_path):
    model = save_model(tmp_path)
    folder = tmp_path / "fmriprep" / "sub-01" / "func"
    preproc = write_run(folder / "sub-01_task-rest_desc-preproc_bold.nii.gz", 4, seed=1)
    smoothed = write_run(folder / "sub-01_task-rest_desc-smoothed_bold.nii.gz", 4, seed=2)
    out = tmp_path / "out"
    assert main(batch(folder / "*_bold.nii.gz", "--out", out, "--model", model)) == 0
    for source, desc in ((preproc, "g3dvitPreproc"), (smoothed, "g3dvitSmoothed")):
        heat = nib.load(out / f"sub-01_task-rest_desc-{desc}_heatmap.nii.gz")
        np.testing.assert_allclose(heat.get_fdata(), expected_heat(model, source), atol=1e-5)
    assert len(list(out.glob("*_heatmap.nii.gz"))) == 2


def _mount_small_disk(folder: Path) -> bool:
    """A real 2 MB tmpfs at ``folder`` (root only); False when it cannot be mounted here."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def test_a_disk_that_fills_before_the_sidecar_keeps_the_old_output_whole(tmp_path, monkeypatch):
    model = save_model(tmp_path)
    source = write_run(tmp_path / "in" / "run.nii.gz", 6, seed=3)
    disk = tmp_path / "disk"
    real_disk = _mount_small_disk(disk)
    try:
        out = disk / "out"
        assert main(batch(source, "--out", out, "--model", model)) == 0
        old_map = (out / "run_desc-g3dvit_heatmap.nii.gz").read_bytes()
        old_sidecar = (out / "run_desc-g3dvit_heatmap.json").read_text()
        write_text = Path.write_text

        def fill_then_write(path, text, *args, **kwargs):
            if "_heatmap.json" in path.name:  # the sidecar: the disk is full by now
                if real_disk:
                    with open(disk / "filler", "wb") as fh:
                        try:
                            while True:
                                fh.write(b"\0" * 65536)
                                fh.flush()
                        except OSError as err:
                            assert err.errno == errno.ENOSPC
                else:  # no tmpfs here: the same error, raised where the write would fail
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return write_text(path, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", fill_then_write)
        assert main(batch(source, "--out", out, "--model", model, "--threshold", "20")) == 1
        monkeypatch.undo()
        assert (out / "run_desc-g3dvit_heatmap.nii.gz").read_bytes() == old_map  # the pair is the old one
        assert (out / "run_desc-g3dvit_heatmap.json").read_text() == old_sidecar
        assert not [p for p in out.iterdir() if p.name.startswith(".run_")]  # no staged file left
        (disk / "filler").unlink(missing_ok=True)
        assert main(batch(source, "--out", out, "--model", model, "--threshold", "20")) == 0
        assert json.loads((out / "run_desc-g3dvit_heatmap.json").read_text())["settings"]["threshold"] == 20
        np.testing.assert_allclose(nib.load(out / "run_desc-g3dvit_heatmap.nii.gz").get_fdata(),
                                   np.moveaxis(g3d.explain(g3d.load_model(model), np.moveaxis(
                                       nib.load(source).get_fdata(dtype=np.float32), -1, 0), method="g3dvit",
                                       threshold=20).heatmap,
                                       0, -1), atol=1e-5)
    finally:
        if real_disk:
            subprocess.run(["umount", str(disk)], check=False)


def test_two_runs_into_one_folder_the_second_is_refused_clearly(tmp_path, capsys):
    model = save_model(tmp_path)
    folder = tmp_path / "in"
    for i in range(3):
        write_run(folder / f"sub-{i:02d}_bold.nii.gz", 4, seed=i)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "napari_g3dvit.cli", *batch(folder / "*.nii.gz", "--out", out,
                                                                              "--model", model)],
                             env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not (out / ".g3dvit-lock").exists() and time.time() < deadline:  # it has started
            time.sleep(0.01)
        assert main(batch(folder / "*.nii.gz", "--out", out, "--model", model)) == 2
        assert first.poll() is None, "the first run ended before the second started; the test proves nothing"
        err = capsys.readouterr().err
        assert f"another g3dvit run is writing into {out}" in err and f"process {first.pid}" in err
    finally:
        stdout, stderr = first.communicate(timeout=180)
    assert first.returncode == 0, stderr
    assert "3 inputs explained" in stdout and len(list(out.glob("*_heatmap.json"))) == 3
    assert not (out / ".g3dvit-lock").exists()


def _nifti2_claiming(path: Path, stored: int, claimed: int) -> Path:
    """A gzipped NIfTI-2 run that stores ``stored`` timepoints but whose header claims ``claimed``."""
    plain = path.with_name("plain.nii")
    nib.save(nib.Nifti2Image(np.random.default_rng(0).normal(size=(12, 8, 16, stored)).astype(np.float32), AFFINE),
             plain)
    raw = bytearray(plain.read_bytes())
    plain.unlink()
    dims = np.frombuffer(bytes(raw[16:80]), dtype="<i8").copy()  # NIfTI-2: dim[8] as int64 at byte 16
    assert dims[0] == 4 and dims[4] == stored
    dims[4] = claimed
    raw[16:80] = dims.tobytes()
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def test_a_nifti2_header_claiming_ten_million_timepoints_is_refused_at_once(tmp_path):
    model = save_model(tmp_path)
    folder = tmp_path / "in"
    write_run(folder / "good.nii.gz", 4, seed=1)
    _nifti2_claiming(folder / "huge.nii.gz", stored=4, claimed=10_000_000)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "napari_g3dvit.cli", *batch(folder / "*.nii.gz", "--out", out,
                                                                           "--model", model)],
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert (out / "good_desc-g3dvit_heatmap.nii.gz").is_file()
    error = json.loads((out / "logs" / "huge_desc-g3dvit_error.json").read_text())["error"]
    assert "truncated" in error and "12x8x16x10000000" in error


def _datalad_dataset(root: Path, outside: Path) -> Path:
    """A BIDS dataset as OpenNeuro ships it: every file a link into .git/annex/objects; sub-02 not
    fetched yet (its link dangles); sub-03's run linked from outside the dataset."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "annexed", "BIDSVersion": "1.9.0"}))
    key = "MD5E-s1234--0123456789abcdef.nii.gz"
    annexed = write_run(root / ".git" / "annex" / "objects" / "Xy" / "Zw" / key / key, 4, seed=1)
    for sub in ("01", "02", "03"):
        (root / f"sub-{sub}" / "func").mkdir(parents=True)
    link = root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    link.symlink_to(os.path.relpath(annexed, link.parent))
    missing = ".git/annex/objects/Ab/Cd/MD5E-s99--feed.nii.gz/MD5E-s99--feed.nii.gz"
    (root / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz").symlink_to("../../" + missing)
    (root / "sub-03" / "func" / "sub-03_task-rest_bold.nii.gz").symlink_to(write_run(outside / "run.nii.gz", 4, seed=2))
    return root


def test_datalad_links_are_named_by_their_own_path_and_a_missing_one_fails_alone(tmp_path):
    model = save_model(tmp_path)
    dataset = _datalad_dataset(tmp_path / "ds", tmp_path / "elsewhere")
    out = tmp_path / "out"
    assert main(["bids", str(dataset), str(out), "participant", "--model", str(model), "--workers", "0",
                 "--method", "g3dvit", "--quiet"]) == 1  # one input could not be read
    for sub in ("01", "03"):
        sidecar = out / f"sub-{sub}" / "func" / f"sub-{sub}_task-rest_desc-g3dvit_heatmap.json"
        assert json.loads(sidecar.read_text())["entities"]["sub"] == sub
    assert not (out / ".git").exists() and not list(out.rglob("*MD5E*"))
    error = json.loads((out / "logs" / "sub-02_task-rest_desc-g3dvit_error.json").read_text())
    assert error["entities"]["sub"] == "02" and "datalad get" in error["error"]
    rows = read_table(out / "group" / "timepoints.tsv")
    assert {r["subject"] for r in rows} == {"01", "02", "03"}
    assert [r["error"] for r in rows if r["subject"] == "02"][0].startswith("sub-02_task-rest_bold.nii.gz is a link")
    # the same files by a glob: the dangling link is one failed input, not a refused batch
    loose = tmp_path / "loose"
    assert main(batch(dataset / "sub-*" / "func" / "*_bold.nii.gz", "--out", loose, "--model", model)) == 1
    assert sorted(p.name for p in loose.glob("*_heatmap.nii.gz")) == [
        "sub-01_task-rest_desc-g3dvit_heatmap.nii.gz", "sub-03_task-rest_desc-g3dvit_heatmap.nii.gz"]


def test_a_file_named_logs_does_not_stop_the_good_inputs(tmp_path, capsys):
    model = save_model(tmp_path)
    folder = tmp_path / "in"
    write_run(folder / "good.nii.gz", 4, seed=1)
    (folder / "bad.nii.gz").write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "logs").write_text("my own notes")
    assert main(batch(folder / "*.nii.gz", "--out", out, "--model", model)) == 1
    assert (out / "good_desc-g3dvit_heatmap.nii.gz").is_file()
    assert (out / "logs").read_text() == "my own notes"
    said = capsys.readouterr().out
    assert "logs is a file, not a folder" in said and f"failed: {folder / 'bad.nii.gz'}: " in said


def test_brackets_in_a_file_name_are_not_a_glob(tmp_path):
    model = save_model(tmp_path)
    bracketed = write_run(tmp_path / "in" / "scan [1].nii.gz", None, seed=1)
    write_run(tmp_path / "in" / "scan 1.nii.gz", None, seed=2)  # what "[1]" would match as a pattern
    out = tmp_path / "out"
    assert main(batch(bracketed, "--out", out, "--model", model)) == 0
    [written] = list(out.glob("*_heatmap.nii.gz"))
    assert written.name == "scan [1]_desc-g3dvit_heatmap.nii.gz"
    np.testing.assert_allclose(nib.load(written).get_fdata(), expected_heat(model, bracketed), atol=1e-5)


def test_an_all_zero_run_is_said_and_recorded(tmp_path, capsys):
    model = save_model(tmp_path)
    zero = tmp_path / "in" / "zero.nii.gz"
    zero.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((12, 8, 16, 3), np.float32), AFFINE), zero)
    out = tmp_path / "out"
    assert main(batch(zero, "--out", out, "--model", model)) == 0
    said = capsys.readouterr().out
    assert "warning: " in said and "zero everywhere" in said
    sidecar = json.loads((out / "zero_desc-g3dvit_heatmap.json").read_text())
    assert any("zero everywhere" in w for w in sidecar["warnings"])
    rows = read_table(out / "group" / "timepoints.tsv")
    assert all("zero everywhere" in r["warning"] for r in rows)


def test_gzip_bytes_named_nii_get_the_hint(tmp_path):
    model = save_model(tmp_path)
    gz = write_run(tmp_path / "in" / "scan.nii.gz", None, seed=1)
    named = gz.rename(gz.with_name("scan.nii"))
    out = tmp_path / "out"
    assert main(batch(named, "--out", out, "--model", model)) == 1
    error = json.loads((out / "logs" / "scan_desc-g3dvit_error.json").read_text())["error"]
    assert "holds gzip-compressed bytes: rename it to scan.nii.gz" in error


def test_a_rerun_removes_every_staged_file_an_interrupted_run_left(tmp_path):
    """A run interrupted while staging an input's outputs leaves hidden temporary files of each kind
    (map, sidecar, tables, error record); planning that input again removes all of them (a peak
    table's was left behind, seen after a Ctrl-C)."""
    from dataclasses import fields

    from napari_g3dvit.cohort import Settings, loose_inputs
    from napari_g3dvit.cohort.jobs import model_ref
    from napari_g3dvit.cohort.run import plan

    model = save_model(tmp_path)
    source = write_run(tmp_path / "in" / "run.nii.gz", 4, seed=5)
    out = tmp_path / "out"
    [item] = loose_inputs([str(source)])
    outputs = item.outputs(out, "g3dvit")
    staged = []
    for f in fields(outputs):
        target = getattr(outputs, f.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.append(target.parent / f".{target.name}.ab12cd{target.suffix}")
        staged[-1].write_text("half written")
    jobs, _, _ = plan([item], out, model_ref(model), Settings(methods=("g3dvit",)))
    assert len(jobs) == 1
    assert [p.name for p in staged if p.exists()] == []
