"""How often each method points at the truth, on the shipped sample models' held-out samples.

    python benchmarks/bench_quality.py                      # all sample models, 40 samples each
    python benchmarks/bench_quality.py --models cube_position --samples 100

For each model, a table of methods (every entry of METHODS, then a random and a uniform map)
x metrics. Mass, pointing and IoU use the maps as shown (default threshold 5 %, trilinear);
deletion and insertion rank the unthresholded maps token by token (the blurred volume as
baseline, 20 steps), and the sanity column is the Spearman correlation between the token maps
of the trained model and of its fully cascade-randomised copy (lower is better). Held-out
samples use seeds the training and validation never used.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch

import napari_g3dvit as g3d
from napari_g3dvit.cam.postprocess import keep_top_percent, tokens_to_voxels
from napari_g3dvit.evaluation import metrics as M
from napari_g3dvit.evaluation.recipes import RECIPES
from napari_g3dvit.models import find_adapter
from napari_g3dvit.sample_models import sample_path

HELD_OUT_SEED = 20_000


def held_out(name: str, n: int):
    recipe = RECIPES[name]
    if recipe.kind == "cube":
        from napari_g3dvit.evaluation.synthetic import make_cubes

        s = make_cubes(recipe.task, n, seed=HELD_OUT_SEED)
        return s.volumes, s.labels, s.masks, None
    from napari_g3dvit.evaluation.brain import make_brains, mni_anatomy

    anatomy = mni_anatomy()
    s = make_brains(anatomy, n, seed=HELD_OUT_SEED)
    return s.volumes, s.labels, s.ventricles, anatomy.brain


def shown(token_map: np.ndarray, patch) -> np.ndarray:
    """A token map as explain shows it: threshold 5 %, trilinear to voxels."""
    t = torch.as_tensor(token_map).reshape(1, -1)
    kept = keep_top_percent(t, 5.0).reshape(1, *token_map.shape)
    return tokens_to_voxels(kept, patch, "trilinear")[0].numpy()


def evaluate(name: str, n: int) -> list[dict]:
    model = g3d.load_model(sample_path(f"{name}.safetensors"))
    patch = find_adapter(model).geometry.patch_size
    volumes, labels, masks, brain = held_out(name, n)
    predict = M.model_predictor(model)
    randomised = M.cascade_randomized(model, seed=1)[-1][1]
    accuracy = float((predict(volumes).argmax(1) == labels).mean())
    names = list(g3d.METHODS) + ["random map", "uniform map"]
    rows = {k: {"mass": [], "point": [], "iou": [], "del": [], "ins": [], "sanity": [], "brain": [], "sec": []} for k in names}
    for i, (volume, label, mask) in enumerate(zip(volumes, labels, masks)):
        started = time.perf_counter()
        exps = g3d.explain(model, volume, method=list(g3d.METHODS), target=int(label), threshold=None)
        per_volume = (time.perf_counter() - started) / len(g3d.METHODS)
        rand_exps = g3d.explain(randomised, volume, method=list(g3d.METHODS), target=int(label), threshold=None)
        grid = exps["gradcam"].token_map.shape
        token_maps = {m: exps[m].token_map for m in g3d.METHODS}
        token_maps["random map"] = M.random_token_map(grid, seed=i)
        token_maps["uniform map"] = np.ones(grid, dtype=np.float32)
        for key, tokens in token_maps.items():
            heat = shown(tokens, patch)
            full = tokens_to_voxels(torch.as_tensor(tokens)[None], patch, "nearest")[0].numpy()
            r = rows[key]
            r["mass"].append(M.relevance_mass(heat, mask))
            r["point"].append(M.pointing_game(heat, mask))
            r["iou"].append(M.topk_iou(heat, mask, 5.0, patch=patch))
            r["del"].append(M.perturbation_curve(predict, volume, full, int(label), "deletion", patch=patch)[2])
            r["ins"].append(M.perturbation_curve(predict, volume, full, int(label), "insertion", patch=patch)[2])
            if key in g3d.METHODS:
                r["sanity"].append(M.spearman(tokens, rand_exps[key].token_map))
                r["sec"].append(per_volume)
            if brain is not None:
                r["brain"].append(M.relevance_mass(heat, brain))
        print(f"  {name}: {i + 1}/{len(volumes)}", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    out = []
    for key in names:
        r = rows[key]
        out.append({"method": key, **{k: (float(np.mean(v)) if v else None) for k, v in r.items()},
                    "accuracy": accuracy, "chance": float(np.mean([m.mean() for m in masks]))})
    return out


def table(name: str, rows: list[dict], n: int) -> str:
    brain = rows[0]["brain"] is not None
    lines = [f"### {name} ({n} held-out samples, model accuracy on them {rows[0]['accuracy']:.2f}, "
             f"chance mass = region fraction {rows[0]['chance']:.4f})", ""]
    head = "| method | mass in region | pointing game | IoU top 5 % | deletion AUC | insertion AUC | sanity rho | s / volume |"
    if brain:
        head = head.replace("| sanity", "| mass in brain | sanity")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["method"], f"{r['mass']:.3f}", f"{r['point']:.2f}", f"{r['iou']:.3f}", f"{r['del']:.3f}", f"{r['ins']:.3f}"]
        if brain:
            cells.append(f"{r['brain']:.3f}")
        cells += ["-" if r["sanity"] is None else f"{r['sanity']:.2f}", "-" if r["sec"] is None else f"{r['sec']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(RECIPES))
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    for name in args.models:
        print(table(name, evaluate(name, args.samples), args.samples), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
