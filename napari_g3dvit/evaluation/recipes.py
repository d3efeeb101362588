"""The shipped sample models: their data, architecture and training, in one place.

``g3dvit train NAME --out sample_models`` re-makes one; the files it writes are
``NAME.safetensors`` (weights + config), ``NAME.json`` (the config, with the dataset settings,
training settings and validation accuracy) and ``NAME_example.nii.gz`` (a held-out volume).
The fMRI task model writes its held-out run instead: ``NAME_run.nii.gz`` (4D, TR in the header),
``NAME_run_events.tsv`` (BIDS events) and ``NAME_activation_mask.nii.gz`` (the ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .fmri import BlockDesign
from .synthetic import CubeTask, make_cubes


def _vit(shape: tuple[int, int, int], patch: int, classes: int) -> dict:
    return {"image_size": [shape[1], shape[2]], "image_patch_size": [patch, patch], "frames": shape[0],
            "frame_patch_size": patch, "num_classes": classes, "dim": 64, "depth": 2, "heads": 4,
            "dim_head": 16, "mlp_dim": 128, "channels": 1, "pool": "cls"}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    kind: str  # "cube", "brain" or "fmri"
    task: CubeTask | BlockDesign | None
    patch: int
    per_epoch: int
    epochs: int
    batch_size: int
    lr: float
    n_val: int = 200
    #: stop once the validation accuracy reaches this; None trains every epoch (more confident
    #: models give sharper maps)
    stop_at: float | None = 0.99
    #: a recipe whose trained weights start this one (all but the final classifier): a
    #: curriculum for tasks whose evidence a fresh model cannot find on its own
    init_from: str | None = None
    #: explain() settings that benchmarks/bench_quality.py found to localise best for this model
    #: (the widget preselects them); None keeps the defaults
    recommended: dict | None = None
    #: the model's per-volume intensity normalisation (config preprocessing.normalize); the
    #: training and validation volumes go through the same one
    normalize: str = "none"
    #: fMRI only: the signal change of the training runs in the first epochs, one value per
    #: epoch (a curriculum: a fresh ViT finds a strong response, then learns the weak one);
    #: later epochs and the validation run use the design's own ``signal_change``
    signal_schedule: tuple[float, ...] = ()

    def vit_config(self) -> dict:
        if self.kind == "cube":
            g = self.task.grid
            return _vit((g, g, g), self.patch, self.task.num_classes)
        from .brain import INPUT_SHAPE

        return _vit(INPUT_SHAPE, self.patch, 2)

    def class_names(self) -> list[str]:
        if self.kind == "brain":
            return ["typical ventricles", "enlarged ventricles"]
        if self.kind == "fmri":
            return ["rest", "task"]
        if self.task.task == "value":
            return ["cube of -1", "cube of +1"]
        cells = self.task.grid // self.task.cube
        return [f"cell {z}-{y}-{x}" for z, y, x in np.ndindex(cells, cells, cells)]


RECIPES = {
    # From scratch this task stays at chance for 700+ steps: the position of the cube only
    # reaches the CLS token once attention prefers the cube's tokens, and attention only learns
    # that once position is read. The value model has learned to attend to the cube, so starting
    # from it turns the task into reading the attended tokens' positions (98 % in 200 steps).
    "cube_position": Recipe(
        "cube_position", "an 8^3 cube at one of 125 aligned positions in a 40^3 grid; label = position",
        "cube", CubeTask("position", grid=40, cube=8, aligned=True, noise=0.0), patch=5,
        per_epoch=800, epochs=10, batch_size=16, lr=5e-4, init_from="cube_value",
        recommended={"layer": "vit.transformer.layers.0.0.norm", "method": "gradcam-elementwise"}),
    "cube_value": Recipe(
        "cube_value", "an 8^3 cube of -1 or +1 anywhere in a 40^3 grid; label = its sign",
        "cube", CubeTask("value", grid=40, cube=8, aligned=False, noise=0.0), patch=5,
        per_epoch=1000, epochs=20, batch_size=16, lr=3e-4,
        recommended={"layer": "vit.transformer.layers.0.0.norm", "method": "gradcam-elementwise"}),
    "brain_ventricles": Recipe(
        "brain_ventricles", "MNI152 T1 at 3 mm; class 1 has enlarged lateral ventricles",
        "brain", None, patch=8, per_epoch=600, epochs=15, batch_size=16, lr=3e-4, stop_at=None,
        # At the last block this model's gradients land on background "register" tokens (its
        # occlusion evidence is at the ventricles); at the first block they follow the evidence.
        recommended={"layer": "vit.transformer.layers.0.0.norm", "method": "hirescam"}),
    # One timepoint (a 3D volume) per sample; per_epoch counts timepoints (whole runs of
    # fmri.BlockDesign.n_timepoints each, at fresh seeds every epoch). z-scored per volume: the
    # session gain and the global drift go, the local contrast of the motor cortex stays.
    # From scratch at a 5 % response the ViT stays at chance for 150+ steps (the response is a
    # small part of 6 of 441 tokens, mostly 2); at 30 % it finds the motor cortex in about 100
    # steps. The signal schedule starts there and comes down to the shipped 3 % by epoch 10.
    "fmri_task": Recipe(
        "fmri_task", "synthetic block-design fMRI run (right-hand finger tapping, 20 s task / 20 s rest, "
        "TR 2 s) on the MNI152 at 3 mm; left primary motor cortex responds; one timepoint per sample, "
        "label = task (HRF-convolved design >= 0.5) or rest",
        "fmri", BlockDesign(), patch=8, per_epoch=400, epochs=18, batch_size=16, lr=1e-3, stop_at=None,
        normalize="zscore", signal_schedule=(0.3, 0.3, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.04),
        # bench_quality.py on a held-out run: at the first block HiResCAM puts 0.082 of the heat in
        # the 210-voxel region (the token oracle 0.109; at the last block 0.004), and the heat in
        # the region follows the HRF-convolved design (r = 0.96) when every timepoint is explained
        # for "task"; explained for its predicted class, rest timepoints look at the region too
        # (its silence is their evidence) and the curve is flat (r = -0.08)
        recommended={"layer": "vit.transformer.layers.0.0.norm", "method": "hirescam", "target": "task"}),
}


def recipe_data(recipe: Recipe):
    """(training_data(epoch) -> (volumes, labels), validation (volumes, labels, masks), extra)."""
    if recipe.kind == "cube":
        val = make_cubes(recipe.task, recipe.n_val, seed=10_000)

        def training(epoch: int):
            s = make_cubes(recipe.task, recipe.per_epoch, seed=1 + epoch)
            return s.volumes, s.labels

        return training, (val.volumes, val.labels, val.masks), {"dataset": {"kind": "cube", **recipe.task.as_dict()}}
    if recipe.kind == "fmri":
        return _fmri_data(recipe)
    from .brain import make_brains, mni_anatomy

    anatomy = mni_anatomy()
    val = make_brains(anatomy, recipe.n_val, seed=10_000)

    def training(epoch: int):
        s = make_brains(anatomy, recipe.per_epoch, seed=1 + epoch)
        return s.volumes, s.labels

    return training, (val.volumes, val.labels, val.ventricles), {"dataset": {"kind": "brain", "voxel_mm": 3},
                                                                  "anatomy": anatomy}


def _fmri_data(recipe: Recipe):
    """Timepoints of runs at seeds 1, 2, ... (new runs every epoch); the run at seed 10 000 validates."""
    from .fmri import activation_region, fmri_anatomy, make_run

    design, tissue = recipe.task, fmri_anatomy()
    runs_per_epoch = max(1, recipe.per_epoch // design.n_timepoints)
    val = make_run(design, seed=10_000, tissue=tissue)

    def training(epoch: int):
        schedule = recipe.signal_schedule
        epoch_design = replace(design, signal_change=schedule[epoch]) if epoch < len(schedule) else design
        runs = [make_run(epoch_design, seed=1 + epoch * runs_per_epoch + i, tissue=tissue)
                for i in range(runs_per_epoch)]
        return np.concatenate([r.data for r in runs]), np.concatenate([r.labels for r in runs])

    centre = [float(c) for c in design.centre_mm]
    dataset = {"kind": "fmri", "voxel_mm": 3, **design.as_dict(),
               "region": f"left primary motor cortex (hand knob), centre MNI {tuple(centre)} mm",
               "region_voxels": int(activation_region(tissue, design).sum()),
               "labels": "1 (task) where the HRF-convolved design (peak 1) is >= 0.5, else 0 (rest)",
               "runs_per_epoch": runs_per_epoch, "training_seeds": "1 + epoch * runs_per_epoch + run",
               "training_signal_schedule": list(recipe.signal_schedule), "validation_seed": 10_000}
    masks = np.broadcast_to(val.mask, val.data.shape)
    return training, (val.data, val.labels, masks), {"dataset": dataset, "anatomy": tissue.anatomy, "run": val}


def _normalised(volumes: np.ndarray, mode: str) -> np.ndarray:
    """[n, D, H, W] through the model's own normalisation (as ``load_model`` will apply it)."""
    import torch

    from ..models.preprocessing import Preprocessing

    if mode == "none":
        return volumes
    prep = Preprocessing(normalize=mode)
    out = np.empty(volumes.shape, dtype=np.float32)
    for start in range(0, len(volumes), 64):  # in pieces: it works in float64
        out[start : start + 64] = prep.to_model(torch.as_tensor(volumes[start : start + 64]), None).numpy()
    return out


def _start_from(vit, donor: str, out: Path) -> None:
    """Copy ``donor``'s trained weights (from ``out``, else the shipped model) into ``vit``,
    all but the final classifier, whose classes differ."""
    from safetensors.torch import load_file

    from ..sample_models import sample_path

    path = out / f"{donor}.safetensors"
    path = path if path.is_file() else sample_path(f"{donor}.safetensors")
    own = vit.state_dict()
    classifier = {"mlp_head.1.weight", "mlp_head.1.bias"}
    saved = {k.removeprefix("vit."): v for k, v in load_file(str(path)).items()}  # saved models wrap the ViT
    weights = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape and k not in classifier}
    kept = set(own) - set(weights)
    if kept != classifier:
        raise ValueError(f"{path} does not fit as a starting point: it lacks {sorted(kept)}")
    vit.load_state_dict({**own, **weights})


def training_space(recipe: Recipe, extra: dict):
    """The grid the recipe's volumes are on (the config's ``input_space``): the MNI152 crop at 3 mm
    for the brain and fMRI models (the affine their files carry), the cube grid at 1 mm otherwise."""
    from ..models.space import Grid, ModelSpace

    if recipe.kind == "cube":
        g = recipe.task.grid
        return ModelSpace(Grid.of(np.eye(4), (g, g, g)))
    affine = extra["run"].affine if recipe.kind == "fmri" else extra["anatomy"].affine
    from .brain import INPUT_SHAPE

    return ModelSpace(Grid.of(affine, INPUT_SHAPE), template="MNI152NLin2009cAsym")


def train_recipe(name: str, out: Path, device: str = "cpu", epochs: int | None = None,
                 progress: bool = True, seed: int = 0) -> dict:
    """Train recipe ``name`` and write its files into ``out``; returns the saved config."""
    import nibabel as nib
    import torch

    from ..models.loading import save_model
    from .train import build_vit, train_classifier

    recipe = RECIPES[name]
    training, (val_x, val_y, val_masks), extra = recipe_data(recipe)
    if recipe.normalize != "none":
        raw_training = training

        def training(epoch: int):
            volumes, labels = raw_training(epoch)
            return _normalised(volumes, recipe.normalize), labels

    vit_config = recipe.vit_config()
    torch.manual_seed(seed)
    vit = build_vit(vit_config)
    if recipe.init_from:
        _start_from(vit, recipe.init_from, Path(out))
    validation = (_normalised(val_x, recipe.normalize), val_y)
    result = train_classifier(vit, training, validation, epochs=epochs or recipe.epochs,
                              batch_size=recipe.batch_size, lr=recipe.lr, device=device, seed=seed,
                              progress=progress, desc=name, target_accuracy=recipe.stop_at)
    config = {
        "architecture": "vit-pytorch-3d", "vit": vit_config, "head": None,
        # input_orientation: the arrays as the sample files store them
        "preprocessing": {"normalize": recipe.normalize}, "input_orientation": "RAS",
        "class_names": recipe.class_names(),
        "description": recipe.description, "dataset": extra["dataset"],
        "training": {"epochs_run": len(result.history), "samples_per_epoch": recipe.per_epoch,
                     "batch_size": recipe.batch_size, "lr": recipe.lr, "optimizer": "AdamW, one-cycle",
                     "device": device, "seconds": round(result.seconds, 1), "seed": seed,
                     "initialised_from": recipe.init_from,
                     "command": f"g3dvit train {name} --out {out}"},
        "validation_accuracy": round(result.validation_accuracy, 4),
    }
    if recipe.recommended:
        config["recommended_explanation"] = dict(recipe.recommended)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(result.model, out / f"{name}.safetensors", config, space=training_space(recipe, extra))
    if recipe.kind == "fmri":
        from .fmri import write_run

        run = extra["run"]
        write_run(run, out / f"{name}_run.nii.gz")  # and {name}_run_events.tsv
        nib.save(nib.Nifti1Image(run.mask.astype(np.uint8), run.affine), out / f"{name}_activation_mask.nii.gz")
        _report(name, config)
        return config
    brain = recipe.kind == "brain"
    affine = extra["anatomy"].affine if brain else np.eye(4)
    example = int(np.flatnonzero(val_y == 1)[0]) if brain else 0  # the brain demo shows class 1
    files = {f"{name}_example.nii.gz": val_x[example],
             f"{name}_example_mask.nii.gz": val_masks[example].astype(np.uint8)}
    if brain:
        anatomy = extra["anatomy"]
        files.update({"mni152_t1_3mm.nii.gz": anatomy.t1,
                      "mni152_brain_mask_3mm.nii.gz": anatomy.brain.astype(np.uint8),
                      "mni152_ventricles_3mm.nii.gz": anatomy.ventricles.astype(np.uint8)})
    for filename, data in files.items():
        nib.save(nib.Nifti1Image(data, affine), out / filename)
    _report(name, config)
    return config


def _report(name: str, config: dict) -> None:
    import json

    print(json.dumps({"model": name, "validation_accuracy": config["validation_accuracy"],
                      "epochs": config["training"]["epochs_run"], "seconds": config["training"]["seconds"]}))
