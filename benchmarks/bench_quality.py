"""How often each method points at the truth, on the shipped sample models' held-out samples.

    python benchmarks/bench_quality.py                      # all sample models, 40 samples each
    python benchmarks/bench_quality.py --models cube_position --samples 100
    python benchmarks/bench_quality.py --models fmri_task --samples 20   # + the time-course table

For each model, a table of methods (the CAM methods at the default layer, the last block's
attention-input LayerNorm, and at the first block's; the attention and perturbation methods;
full occlusion as the reference; auto, the choice made without ground truth; then a random and a
uniform map)
x metrics; a token-overlap oracle (each token scored by its fraction inside the region) shows
the ceiling of any map at token resolution. Mass, pointing and IoU use the maps as shown
(default threshold 5 %, trilinear). Deletion and insertion rank the unthresholded maps token
by token in 20 steps; the baseline is zero for the cubes (their background is 0) and a blur
for the brain (see BASELINE). The sanity column is the Spearman correlation between the token
maps of the trained model and of its fully cascade-randomised copy (lower is better).
Held-out samples use a seed that training and validation never used. For the fMRI task model
they are the task timepoints of a held-out run (its accuracy is per timepoint over the whole
run), and a second table gives, per method, the Pearson correlation of the heat-in-region curve
with the HRF-convolved design over every timepoint of that run.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import napari_g3dvit as g3d
from napari_g3dvit.cam.postprocess import keep_top_percent, tokens_to_voxels
from napari_g3dvit.evaluation import metrics as M
from napari_g3dvit.evaluation.recipes import RECIPES
from napari_g3dvit.models import find_adapter
from napari_g3dvit.registry import CAM_METHODS
from napari_g3dvit.sample_models import sample_path

HELD_OUT_SEED = 20_000


#: What deleted voxels become: the cubes' background is exactly 0; in the brain the volume's
#: mean (0.23) is darker than the ventricles (0.35), so it would add evidence, while a 5-voxel
#: blur pulls them towards the surrounding white matter (0.74).
BASELINE = {"cube": "zero", "brain": "blur", "fmri": "blur"}


def model_path(name: str) -> Path:
    return sample_path(f"{name}.safetensors")


def held_out_run(name: str):
    """The fMRI model's held-out run (a seed neither training nor validation used)."""
    from napari_g3dvit.evaluation.fmri import make_run

    return make_run(RECIPES[name].task, seed=HELD_OUT_SEED)


def held_out(name: str, n: int):
    recipe = RECIPES[name]
    if recipe.kind == "fmri":  # the task timepoints of the held-out run: where the truth is the region
        run = held_out_run(name)
        task = np.flatnonzero(run.labels == 1)[:n]
        return run.data[task], run.labels[task], np.broadcast_to(run.mask, run.data[task].shape), run.brain
    if recipe.kind == "cube":
        from napari_g3dvit.evaluation.synthetic import make_cubes

        s = make_cubes(recipe.task, n, seed=HELD_OUT_SEED)
        return s.volumes, s.labels, s.masks, None
    from napari_g3dvit.evaluation.brain import make_brains, mni_anatomy

    anatomy = mni_anatomy()
    s = make_brains(anatomy, n, seed=HELD_OUT_SEED)
    return s.volumes, s.labels, s.ventricles, anatomy.brain


def token_overlap(mask: np.ndarray, patch) -> np.ndarray:
    """Each token's fraction inside the region: the best a token-resolution map can do."""
    g = tuple(s // p for s, p in zip(mask.shape, patch))
    return mask.reshape(g[0], patch[0], g[1], patch[1], g[2], patch[2]).mean(axis=(1, 3, 5)).astype(np.float32)


def shown(token_map: np.ndarray, patch) -> np.ndarray:
    """A token map as explain shows it: threshold 5 %, trilinear to voxels."""
    t = torch.as_tensor(token_map).reshape(1, -1)
    kept = keep_top_percent(t, 5.0).reshape(1, *token_map.shape)
    return tokens_to_voxels(kept, patch, "trilinear")[0].numpy()


def evaluate(name: str, n: int, curves: bool = True, sanity: bool = True) -> list[dict]:
    model = g3d.load_model(model_path(name))
    adapter = find_adapter(model)
    patch = adapter.geometry.patch_size
    volumes, labels, masks, brain = held_out(name, n)
    baseline = BASELINE[RECIPES[name].kind]
    predict = M.model_predictor(model)
    randomised = M.cascade_randomized(model, seed=1)[-1][1] if sanity else None
    accuracy = float((predict(volumes).argmax(1) == labels).mean())
    if RECIPES[name].kind == "fmri":  # per timepoint, over the whole held-out run
        run = held_out_run(name)
        accuracy = float((predict(run.data).argmax(1) == run.labels).mean())
    layers = {"last block": adapter.default_layer, "first block": adapter.attention_norm(0)}
    free = [m for m in g3d.METHODS if m not in CAM_METHODS and m != "occlusion"]  # no single layer
    occlusions = {"occlusion (fast, drop)": dict(occlusion="fast", baseline="drop"),
                  "occlusion (estimate, drop)": dict(occlusion="estimate", baseline="drop"),
                  "occlusion (full, drop)": dict(occlusion="full", baseline="drop"),
                  f"occlusion (full, {baseline})": dict(occlusion="full", baseline=baseline)}
    expensive = {"occlusion (full, drop)", f"occlusion (full, {baseline})", "auto"}  # not on the random model
    maps = [f"{m} @ {where}" for where in layers for m in CAM_METHODS] + free + list(occlusions) + ["auto"]
    names = maps + ["random map", "uniform map", "token-overlap oracle"]
    rows = {k: {"mass": [], "point": [], "iou": [], "del": [], "ins": [], "gain": [], "sanity": [], "brain": [],
                "sec": [], "rho_occ": []} for k in names}
    choices: dict[str, int] = {}

    def all_maps(net, volume, label, cheap: bool = False) -> tuple[dict, dict, str]:
        """Token maps of every method for one volume, and seconds per map."""
        seconds, found = {}, {}
        started = time.perf_counter()
        cams = g3d.explain(net, volume, method=list(CAM_METHODS), layer=list(layers.values()),
                           target=int(label), threshold=None)
        seconds.update({f"{m} @ {w}": (time.perf_counter() - started) / len(cams) for w in layers for m in CAM_METHODS})
        found.update({f"{m} @ {where}": cams[(m, layer)].token_map for where, layer in layers.items() for m in CAM_METHODS})
        for m in free:
            started = time.perf_counter()
            found[m] = g3d.explain(net, volume, method=m, target=int(label), threshold=None,
                                   baseline=None if m == "cp-lrp" else baseline).token_map
            seconds[m] = time.perf_counter() - started
        for label_, settings in occlusions.items():
            if cheap and label_ in expensive:
                continue
            started = time.perf_counter()
            found[label_] = g3d.explain(net, volume, method="occlusion", target=int(label), threshold=None,
                                        **settings).token_map
            seconds[label_] = time.perf_counter() - started
        chosen = ""
        if not cheap:
            started = time.perf_counter()
            auto = g3d.explain(net, volume, method="auto", target=int(label), threshold=None, rechoose=True)
            seconds["auto"] = time.perf_counter() - started
            found["auto"] = auto.token_map
            chosen = auto.extra["auto"]["chosen"]
        return found, seconds, chosen

    reference_key = "occlusion (full, drop)"
    for i, (volume, label, mask) in enumerate(zip(volumes, labels, masks)):
        token_maps, seconds, chosen = all_maps(model, volume, label)
        choices[chosen] = choices.get(chosen, 0) + 1
        random_maps = all_maps(randomised, volume, label, cheap=True)[0] if sanity else {}
        reference = token_maps[reference_key]
        grid = next(iter(token_maps.values())).shape
        token_maps["random map"] = M.random_token_map(grid, seed=i)
        token_maps["uniform map"] = np.ones(grid, dtype=np.float32)
        token_maps["token-overlap oracle"] = token_overlap(mask, patch)
        gains = criterion_gains(model, volume, int(label), token_maps)
        for key, tokens in token_maps.items():
            heat = shown(tokens, patch)
            full = tokens_to_voxels(torch.as_tensor(tokens)[None], patch, "nearest")[0].numpy()
            r = rows[key]
            r["mass"].append(M.relevance_mass(heat, mask))
            r["point"].append(M.pointing_game(heat, mask))
            r["iou"].append(M.topk_iou(heat, mask, 5.0, patch=patch))
            r["gain"].append(gains[key])
            for key_, mode in (("del", "deletion"), ("ins", "insertion")) if curves else ():
                curve = M.perturbation_curve(predict, volume, full, int(label), mode, baseline=baseline, patch=patch)
                r[key_].append(curve[2])
            if key in seconds:
                r["sec"].append(seconds[key])
                r["rho_occ"].append(M.spearman(tokens, reference))
            if key in random_maps:
                r["sanity"].append(M.spearman(tokens, random_maps[key]))
            if brain is not None:
                r["brain"].append(M.relevance_mass(heat, brain))
        print(f"  {name}: {i + 1}/{len(volumes)}", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = []
    for key in names:
        r = rows[key]
        out.append({"method": key, **{k: (float(np.nanmean(v)) if v else None) for k, v in r.items()},
                    "accuracy": accuracy, "chance": float(np.mean([m.mean() for m in masks])),
                    "baseline": baseline, "choices": choices})
    return out


def criterion_gains(model, volume: np.ndarray, label: int, token_maps: dict) -> dict:
    """auto's criterion (relevance gain, dropped tokens) of every map on one volume."""
    from napari_g3dvit.cam.engine import prepared_model
    from napari_g3dvit.cam.faithfulness import relevance_curves
    from napari_g3dvit.explaining import model_inputs, preprocessing_of

    adapter = find_adapter(model)
    prep = preprocessing_of(model, None)
    inputs = model_inputs(adapter, prep.to_model(torch.as_tensor(volume[None]).float(), adapter.geometry.input_shape))
    maps = {key: torch.as_tensor(np.asarray(t, dtype=np.float32)).reshape(1, -1) for key, t in token_maps.items()}
    with prepared_model(model, torch.device("cpu")):
        curves = relevance_curves(adapter, inputs, maps, torch.tensor([label]))
    return {key: float(c.gain[0]) for key, c in curves.items()}


def table(name: str, rows: list[dict], n: int) -> str:
    brain = rows[0]["brain"] is not None
    lines = [f"### {name} ({n} held-out samples, model accuracy on them {rows[0]['accuracy']:.2f}, "
             f"chance mass = region fraction {rows[0]['chance']:.4f}, deletion/insertion baseline: "
             f"{rows[0]['baseline']})", ""]
    head = ("| method | mass in region | pointing game | IoU top 5 % | deletion AUC | insertion AUC | "
            "auto's criterion | rho with full occlusion (drop) | sanity rho | s / map |")
    if brain:
        head = head.replace("| sanity", "| mass in brain | sanity")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        def cell(value, form: str) -> str:
            return "-" if value is None else format(value, form)

        cells = [r["method"], f"{r['mass']:.3f}", f"{r['point']:.2f}", f"{r['iou']:.3f}", cell(r["del"], ".3f"),
                 cell(r["ins"], ".3f"), f"{r['gain']:+.3f}"]
        if brain:
            cells.append(f"{r['brain']:.3f}")
        cells.insert(7, "-" if r["rho_occ"] is None else f"{r['rho_occ']:.2f}")
        cells += ["-" if r["sanity"] is None else f"{r['sanity']:.2f}", "-" if r["sec"] is None else f"{r['sec']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    by = {r["method"]: r for r in rows}
    oracle, auto, occlusion = by["token-overlap oracle"], by["auto"], by["occlusion (full, drop)"]
    cp, cams = by["cp-lrp"], [r for r in rows if " @ " in r["method"]]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0 else ("1.00" if a == b else "inf")

    lines += ["", f"auto's choices: {rows[0]['choices']}; auto / oracle: mass {ratio(auto['mass'], oracle['mass'])}, "
                  f"pointing {ratio(auto['point'], oracle['point'])}; auto / full occlusion (drop): mass "
                  f"{ratio(auto['mass'], occlusion['mass'])}, pointing {ratio(auto['point'], occlusion['point'])}; "
                  f"cp-lrp against the best CAM method: mass {cp['mass']:.3f} vs {max(r['mass'] for r in cams):.3f}, "
                  f"pointing {cp['point']:.2f} vs {max(r['point'] for r in cams):.2f}"]
    return "\n".join(lines)


def time_course_table(name: str) -> str:
    """Pearson r of the heat-in-region curve (and of p(task)) with the HRF-convolved design, per method.

    Every timepoint of the held-out run is explained, for its predicted class and for the task
    class; the curve is the mean heat in the activation region (``timecourse.time_courses``).
    """
    from napari_g3dvit.timecourse import time_courses

    model = g3d.load_model(model_path(name))
    run = held_out_run(name)
    baseline = BASELINE["fmri"]
    task = model.g3dvit_config["class_names"].index("task")
    adapter = find_adapter(model)
    first, last = adapter.attention_norm(0), adapter.default_layer
    methods = ([(m, first) for m in CAM_METHODS] + [(m, last) for m in CAM_METHODS]
               + [(m, None) for m in g3d.METHODS if m not in CAM_METHODS] + [("auto", None)])
    lines = [f"### {name}: heat in the activation region over time ({len(run.data)} timepoints of the held-out "
             f"run, TR {run.tr:g} s)", "",
             "| method | r(heat in region, design), predicted class | r(heat in region, design), task class "
             "| r(p(task), design) | s / timepoint |", "|---|---|---|---|---|"]
    for method, layer in methods:
        cells = []
        started = time.perf_counter()
        for target in (None, task):
            exp = g3d.explain(model, run.data, method=method, layer=layer, target=target, baseline=baseline,
                              batch_size=10)
            courses = time_courses(exp, run.mask, tr=run.tr)
            cells.append(float(np.corrcoef(courses.heat, run.regressor)[0, 1]))
            p_task = np.atleast_2d(exp.probabilities)[:, task]
        seconds = (time.perf_counter() - started) / (2 * len(run.data))
        r_prob = float(np.corrcoef(p_task, run.regressor)[0, 1])
        label = {first: f"{method} @ first block", last: f"{method} @ last block"}.get(layer, method)
        if method == "auto":
            label = f"auto ({exp.extra['auto']['chosen']})"
        lines.append(f"| {label} | {cells[0]:.2f} | {cells[1]:.2f} | {r_prob:.2f} | {seconds:.3f} |")
        print(f"  {name} time course: {method}", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(RECIPES))
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--no-curves", action="store_true", help="skip the painted deletion/insertion AUCs")
    parser.add_argument("--no-sanity", action="store_true", help="skip the randomised-model check")
    parser.add_argument("--no-time-course", action="store_true", help="skip the fMRI time-course table")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    for name in args.models:
        rows = evaluate(name, args.samples, curves=not args.no_curves, sanity=not args.no_sanity)
        print(table(name, rows, args.samples), end="\n\n", flush=True)
        if RECIPES[name].kind == "fmri" and not args.no_time_course:
            print(time_course_table(name), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
