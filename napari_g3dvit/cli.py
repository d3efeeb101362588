"""Command line: ``g3dvit napari`` (napari with a sample, its model and the widget),
``g3dvit demo`` (explain a synthetic volume to NIfTI, headless), ``g3dvit train NAME``
(re-make a shipped sample model), ``g3dvit model set-space CKPT --like IMAGE`` (record the grid
a model was trained on), ``g3dvit bids`` (a BIDS App: a dataset's files on Dask
workers, then a group table) and ``g3dvit batch`` (the same for files named directly)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np
    import torch
    import napari_g3dvit as g3d
    from napari_g3dvit.models.vit_pytorch3d import import_vit3d

    rng = np.random.default_rng(args.seed)
    volume = rng.normal(0.0, 0.2, size=(32, 32, 32)).astype(np.float32)
    corner = rng.integers(0, 24, size=3)
    sl = tuple(slice(c, c + 8) for c in corner)
    volume[sl] += 1.0
    torch.manual_seed(args.seed)
    model = import_vit3d().ViT(image_size=32, image_patch_size=4, frames=32, frame_patch_size=4, num_classes=2,
                dim=64, depth=2, heads=4, mlp_dim=128, channels=1, dim_head=16).eval()
    from .defaults import run_defaults
    from .registry import SETTINGS

    defaults = run_defaults(None)
    own = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    exp = g3d.explain(model, volume, method=args.method or defaults["method"], threshold=args.threshold, **own)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels
    nib.save(nib.Nifti1Image(volume, affine), out / "volume.nii.gz")
    nib.save(nib.Nifti1Image(exp.heatmap, affine), out / "heatmap.nii.gz")
    print(f"untrained demo ViT on a 32^3 synthetic volume with a cube at voxel {tuple(int(c) for c in corner)}")
    chose = f" (auto chose it by {exp.extra['auto']['criterion'].split(':')[0]})" if "auto" in exp.extra else ""
    print(f"method {exp.method}{chose}, layer {exp.layer}, target class {exp.target}, "
          f"p = {exp.probabilities[exp.target]:.3f}, {np.count_nonzero(exp.token_map)} of "
          f"{exp.token_map.size} tokens kept")
    print(f"wrote {out / 'volume.nii.gz'} and {out / 'heatmap.nii.gz'}")
    return 0


def open_sample_viewer(sample: str, explain: bool = False, show: bool = True):
    """A napari viewer in 3D with ``sample`` opened and the explain widget docked, model loaded.

    Everything goes through napari's own routes (File > Open Sample, Plugins > Explain 3D ViT).
    Returns (viewer, widget). With ``explain`` it also runs the explanation and waits for it.
    """
    import napari

    from .display import camera

    viewer = napari.Viewer(title="napari-g3dvit", show=show)
    viewer.open_sample("napari-g3dvit", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Explain 3D ViT")
    image = next(layer for layer in viewer.layers if layer.metadata.get("g3dvit_model"))
    widget.volume.value = image  # offers (and loads) the sample's model
    widget.wait()
    if image.ndim == 4:  # a run: explain every timepoint and follow them on the Time course dock
        from ._widget import ALL

        widget.timepoints.value = ALL
        widget.show_inspect.value = False  # a shorter Explain dock leaves the Time course dock room
        _, course = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Time course")
        labels = [layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels)]
        if labels:
            course.region.value = labels[0]
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera(viewer).zoom /= 3 ** 0.5  # reset_view fits a face; a turned cube needs its diagonal
    camera(viewer).angles = (0, -60, 60) if sample.startswith("brain") else (10, -30, 60)
    if explain and widget.run() is not None:
        widget.wait()
    return viewer, widget


def _napari(args: argparse.Namespace) -> int:
    import napari

    viewer, widget = open_sample_viewer(args.sample, explain=args.explain or bool(args.screenshot))
    if widget.last_error:
        print(f"error: {widget.last_error}", file=sys.stderr)
    if args.screenshot:
        viewer.window.resize(1500, 900)
        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        viewer.window.screenshot(args.screenshot, canvas_only=False, flash=False)
        print(f"{widget.result.value}\nwrote {args.screenshot}")
        viewer.close()
        return 0 if not widget.last_error else 1
    napari.run()
    return 0


def _train(args: argparse.Namespace) -> int:
    from .evaluation.recipes import train_recipe

    for name in args.names:
        train_recipe(name, Path(args.out), device=args.device, epochs=args.epochs, progress=not args.quiet)
    return 0


def _set_space(args: argparse.Namespace) -> int:
    from .models.loading import set_input_space
    from .models.space import ModelSpace

    space = ModelSpace.from_image(args.like, template=args.template)
    set_input_space(args.checkpoint, space, config=args.config)
    print(f"{Path(args.checkpoint).name}: input_space set to {space.describe()} ({space.grid.box()}), "
          f"from {Path(args.like).name}")
    return 0


def _cohort_options(parser: argparse.ArgumentParser, methods: list[str]) -> None:
    """The options ``g3dvit bids ... participant`` and ``g3dvit batch`` share."""
    from .cohort.jobs import DEFAULT_BATCH, DEFAULT_CHUNK
    from .options import DEFAULT_THRESHOLD, INTERPOLATIONS, UPSAMPLE_MODES

    parser.add_argument("--model", metavar="CKPT", help="the model checkpoint (.safetensors or .pt)")
    parser.add_argument("--config", metavar="JSON", help="its config, when not beside it")
    parser.add_argument("--method", nargs="+", choices=methods, metavar="M",
                        help=f"one or more of: {', '.join(methods)} (default: auto, as in the widget)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, metavar="P",
                        help=f"keep the top P %% of token values (default {DEFAULT_THRESHOLD:g}; 100 keeps all)")
    parser.add_argument("--target", type=int, help="explain this class (default: the class the model's config "
                                                   "recommends, as in the widget; else each volume's predicted class)")
    parser.add_argument("--upsample", default="trilinear", choices=UPSAMPLE_MODES)
    method_setting_options(parser)
    parser.add_argument("--atlas", metavar="LABELS", help="a label volume: heat per label into each sidecar and a TSV")
    parser.add_argument("--atlas-names", metavar="TABLE",
                        help="names of the atlas' labels: a BIDS dseg.tsv, a FreeSurfer colour LUT or an FSL atlas "
                             "XML (default: one found beside the atlas)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="local worker processes (default: one per CPU core; 0: no Dask, in this process)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument("--device", default="cpu",
                        help="cpu (the default), cuda, cuda:N or mps (Apple's GPU) on every worker; operations "
                             "Apple's GPU lacks run on the CPU (said in the sidecar)")
    parser.add_argument("--interpolation", default="trilinear", choices=list(INTERPOLATIONS),
                        help="how inputs on another grid than the model's (another voxel size, field of view or "
                             "orientation in the same space) are resampled into it, and their maps back "
                             "(default trilinear)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, metavar="B",
                        help=f"timepoints per forward pass, halved on out-of-memory (default {DEFAULT_BATCH})")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, metavar="C",
                        help=f"timepoints of a 4D run per task (default {DEFAULT_CHUNK})")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that are already complete")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def method_setting_options(parser: argparse.ArgumentParser) -> None:
    """One option per setting the methods read (``registry.SETTINGS``), named as in ``explain``."""
    from .registry import SETTINGS, SPECS

    for name, setting in SETTINGS.items():
        readers = ", ".join(m for m, s in SPECS.items() if name in s.settings)
        shown = "each method's own" if setting.default is None else setting.default
        parser.add_argument(setting.flag, dest=name, type=setting.kind, choices=setting.choices,
                            default=setting.default, metavar=name.upper(),
                            help=f"{setting.help} (read by {readers}; default: {shown})")


def _model_config(model: Path, config: str | None) -> dict:
    """The model's config, read from the JSON beside it (the client loads no model)."""
    from .models.config import find_config_beside, read_config_file

    path = Path(config) if config else find_config_beside(model)
    return read_config_file(path) if path else {}


def _check_device(name: str) -> None:
    """Refuse a device this machine lacks before any worker starts (workers run on this machine
    unless a scheduler is given; torch is imported only for a GPU name)."""
    if name == "cpu":
        return
    from .devices import resolve_device

    resolve_device(name)


def _run_cohort(args: argparse.Namespace, inputs_of, bids_dir=None) -> int:
    """Participant level, then the group table, holding the output folder; Ctrl-C at any moment
    ends with one line and exit status 130."""
    from .cohort import Settings, explain_cohort, group_level
    from .cohort.lock import output_lock

    if not args.model:
        print("g3dvit: error: --model is required to explain", file=sys.stderr)
        return 2
    from .defaults import run_defaults

    if args.atlas_names and not args.atlas:
        print("g3dvit: error: --atlas-names names the labels of an --atlas; give the atlas too", file=sys.stderr)
        return 2
    if not args.scheduler:
        _check_device(args.device)
    defaults = run_defaults(_model_config(Path(args.model), args.config))  # what the widget preselects
    settings = Settings(methods=tuple(dict.fromkeys(args.method or [defaults["method"]])),
                        layer=args.layer or defaults["layer"], pooling=args.pooling,
                        threshold=args.threshold, upsample=args.upsample,
                        target=defaults["target"] if args.target is None else args.target,
                        baseline=args.baseline, steps=args.steps, occlusion=args.occlusion,
                        relevance_block=args.relevance_block, device=args.device,
                        batch_size=args.batch_size, chunk=args.chunk, atlas=args.atlas,
                        atlas_names=args.atlas_names, interpolation=args.interpolation)

    def started(client) -> None:
        link = getattr(client, "_g3dvit_dashboard", None) or getattr(client, "dashboard_link", None)
        workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        print(f"g3dvit: {workers} Dask workers; dashboard: {link or 'none (pip install bokeh)'}", file=sys.stderr)

    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out):
            report = explain_cohort(inputs_of(), out, args.model, settings, config=args.config,
                                    workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite,
                                    progress=not args.quiet, bids_dir=bids_dir, on_start=started)
            print(report.summary())
            if report.done or report.skipped or report.failed:
                try:
                    group_level(out)
                    print(f"group table: {out / 'group' / 'timepoints.tsv'}")
                except OSError as err:  # a full disk: the participant outputs stand; say what is missing
                    print(f"g3dvit: the group table could not be written ({err.strerror or err}); run "
                          f"'g3dvit bids ... group' on {out} once there is room", file=sys.stderr)
                    return 1
    except KeyboardInterrupt:
        print("g3dvit: interrupted; finished outputs are complete. Run the same command again to do the rest.",
              file=sys.stderr)
        return 130
    return 0 if report.ok else 1


def _bids(args: argparse.Namespace) -> int:
    from .cohort import bids_inputs, group_level

    if args.level == "group":
        summary = group_level(args.out_dir)
        print(f"group table: {Path(args.out_dir) / 'group' / 'timepoints.tsv'} ({summary['rows']} rows, "
              f"{summary['inputs']} inputs, {len(summary['failed'])} failed)")
        return 0
    if Path(args.out_dir).resolve() == Path(args.bids_dir).resolve():
        print("g3dvit: error: OUT_DIR must not be the BIDS dataset itself", file=sys.stderr)
        return 2
    return _run_cohort(args, lambda: bids_inputs(args.bids_dir, args.participant_label, suffix=args.suffix),
                       bids_dir=args.bids_dir)


def _batch(args: argparse.Namespace) -> int:
    from .cohort import loose_inputs

    args.out_dir = args.out
    return _run_cohort(args, lambda: loose_inputs(args.files))


def main(argv: list[str] | None = None) -> int:
    from .registry import AUTO, METHODS

    parser = argparse.ArgumentParser(prog="g3dvit", description="Class-activation maps for 3D ViTs.")
    sub = parser.add_subparsers(dest="command", required=True)
    from .sample_models import SAMPLE_MODELS

    viewer = sub.add_parser("napari", help="open napari with a sample volume, its model and the widget")
    viewer.add_argument("--sample", default=SAMPLE_MODELS[0], choices=SAMPLE_MODELS)
    viewer.add_argument("--explain", action="store_true", help="run the explanation at once")
    viewer.add_argument("--screenshot", metavar="PNG", help="explain, save a screenshot of the window, exit")
    viewer.set_defaults(run=_napari)
    demo = sub.add_parser("demo", help="explain a synthetic volume with a small ViT, write NIfTI")
    demo.add_argument("--out", default="out/demo", help="folder for volume.nii.gz and heatmap.nii.gz")
    # auto by default, as everywhere. An untrained ViT's LayerNorms still have the identity
    # affine, which makes g3dvit maps exactly empty (see README).
    demo.add_argument("--method", default=None, choices=[*METHODS, AUTO], help="default: auto, as in the widget")
    demo.add_argument("--threshold", type=float, default=5.0)
    method_setting_options(demo)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    from .evaluation.recipes import RECIPES

    train = sub.add_parser("train", help="train a sample model (see napari_g3dvit/evaluation/recipes.py)")
    train.add_argument("names", nargs="+", choices=sorted(RECIPES), metavar="NAME",
                       help=f"one or more of: {', '.join(sorted(RECIPES))}")
    train.add_argument("--out", default="sample_models", help="folder for the model files")
    train.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (Apple's GPU)")
    train.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)
    model = sub.add_parser("model", help="edit a model's config: set-space records the grid it was trained on")
    model_sub = model.add_subparsers(dest="action", required=True)
    set_space = model_sub.add_parser(
        "set-space", help="record the grid the model was trained on (affine, shape) from a reference image, "
                          "so that scans on any grid in that space are resampled into it")
    set_space.add_argument("checkpoint", metavar="CKPT")
    set_space.add_argument("--like", required=True, metavar="IMAGE.nii.gz",
                           help="a volume on the training grid (one training image)")
    set_space.add_argument("--template", metavar="NAME",
                           help="the template its millimetres are in, e.g. MNI152NLin2009cAsym")
    set_space.add_argument("--config", metavar="JSON", help="the config to change, when not beside the checkpoint")
    set_space.set_defaults(run=_set_space)
    methods = [*METHODS, AUTO]
    bids = sub.add_parser("bids", help="a BIDS App: explain a dataset's files on Dask workers (participant), "
                                       "then tabulate them (group)")
    bids.add_argument("bids_dir", metavar="BIDS_DIR")
    bids.add_argument("out_dir", metavar="OUT_DIR", help="the derivatives folder")
    bids.add_argument("level", choices=["participant", "group"])
    bids.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                      help="participants to explain (01 or sub-01; default all)")
    bids.add_argument("--suffix", default="bold", help="which files: bold, T1w, ... (default bold)")
    _cohort_options(bids, methods)
    bids.set_defaults(run=_bids)
    batch = sub.add_parser("batch", help="explain NIfTI files (paths or glob patterns) on Dask workers")
    batch.add_argument("files", nargs="+", metavar="FILE_OR_GLOB")
    batch.add_argument("--out", required=True, metavar="DIR", help="folder for the maps, sidecars and tables")
    _cohort_options(batch, methods)
    batch.set_defaults(run=_batch)
    args = parser.parse_args(argv)
    from .errors import G3DViTError

    try:
        return args.run(args)
    except (G3DViTError, OSError) as err:  # bad input or a file-system fault: said plainly, no traceback
        print(f"g3dvit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before or after a cohort run's own handling: one line, no traceback
        print("g3dvit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
