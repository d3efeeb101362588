"""Cost of the methods as ratios to forward-only inference, and how well fast occlusion ranks.

Models for the cost tables (random weights, LayerNorm affines randomised as in bench_engine.py):
- the published fMRI ViT: 90^3 input, patch 9 (1000 tokens + CLS), dim 1024, depth 6, heads 8,
  mlp_dim 2048;
- a 512-token ViT: 64^3 input, patch 8, dim 256, depth 6, heads 8, mlp_dim 512 (auto's goal).
One volume; every time is the median of ``--repeats`` runs after one warm-up, and every ratio
divides two times of this run. "auto, first call" chooses afresh (``rechoose=True``); "auto,
later call" reuses the remembered choice for the same model and input shape.

The ranking table compares fast occlusion (and its first-order estimate) with full occlusion,
token by token (Spearman), on the shipped sample models' example volumes and the fMRI sample's
first task timepoint, for each removal. The agreement table compares each map with full
occlusion (tokens dropped) of the same model on two ViTs no method or setting was tuned on
(random weights, vit-pytorch and MONAI): Spearman over tokens and the share of full occlusion's
top 5 % tokens that the map's top 5 % holds.

    python benchmarks/bench_methods.py                    # CPU: both cost tables and the ranking
    python benchmarks/bench_methods.py --device cuda      # on a GPU
    python benchmarks/bench_methods.py --skip-ranking     # the cost tables only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import FMRI, sync  # noqa: E402

import napari_g3dvit as g3d  # noqa: E402
from napari_g3dvit.evaluation.metrics import spearman  # noqa: E402
from napari_g3dvit.models import find_adapter  # noqa: E402
from napari_g3dvit.registry import spec  # noqa: E402

SMALL = dict(image_size=64, image_patch_size=8, frames=64, frame_patch_size=8, num_classes=2, dim=256,
             depth=6, heads=8, mlp_dim=512, channels=1, dim_head=32)


def build(config: dict, device: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    from vit_pytorch.vit_3d import ViT

    torch.manual_seed(seed)
    model = ViT(**config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
    side = config["frames"]
    return model.eval().to(device), torch.randn(side, side, side)


def timed(fn, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def cost_table(name: str, config: dict, device: str, repeats: int, goals: dict) -> None:
    model, volume = build(config, device)
    inputs = volume[None, None].to(device)
    common = dict(device=device, threshold=None)
    one_pass = [m for m in g3d.METHODS if spec(m).family in ("cam", "attention", "cp-lrp")]
    kept = {}
    cases = {
        "forward only (inference)": lambda: model(inputs),
        "cp-lrp": lambda: g3d.explain(model, volume, method="cp-lrp", **common),
        "g3dvit (published)": lambda: g3d.explain(model, volume, method="g3dvit", **common),
        "grad-rollout": lambda: g3d.explain(model, volume, method="grad-rollout", **common),
        "occlusion (estimate)": lambda: g3d.explain(model, volume, method="occlusion", occlusion="estimate", **common),
        "occlusion (fast)": lambda: kept.__setitem__("fast", g3d.explain(model, volume, method="occlusion", **common)),
        "all one-pass families (CAM + attention + cp-lrp), one call": lambda: g3d.explain(
            model, volume, method=one_pass, **common),
        "auto, first call": lambda: kept.__setitem__("auto", g3d.explain(model, volume, rechoose=True, **common)),
        "auto, later call": lambda: g3d.explain(model, volume, **common),
    }
    with torch.no_grad():
        cases["forward only (inference)"]()
    cases["cp-lrp"]()
    tokens = find_adapter(model).geometry.num_patches
    print(f"\n### {name} ({tokens} tokens), {device}, torch {torch.__version__}, median of {repeats}\n")
    print("| case | seconds | x inference | goal |")
    print("|---|---:|---:|---|", flush=True)
    base = None
    for case, fn in cases.items():
        runs = []
        for _ in range(repeats):
            if case == "forward only (inference)":
                with torch.no_grad():
                    runs.append(timed(fn, device))
            else:
                runs.append(timed(fn, device))
        seconds = statistics.median(runs)
        base = base or seconds
        goal = goals.get(case)
        verdict = "" if goal is None else f"<= {goal}x: {'met' if seconds / base <= goal else 'missed'}"
        print(f"| {case} | {seconds:.2f} | {seconds / base:.1f} | {verdict} |", flush=True)
    auto = kept["auto"].extra["auto"]
    print(f"\nauto chose {auto['chosen']} in {auto['seconds']:.2f} s ({len(auto['scores'])} candidates, "
          f"{len(auto['pruned'])} pruned); fast occlusion measured {kept['fast'].extra['forwards']} tokens "
          f"exactly", flush=True)


def ranking_table(device: str) -> None:
    import nibabel as nib

    from napari_g3dvit.sample_models import SAMPLE_MODELS, sample_path

    print("\n### Fast occlusion against full occlusion (Spearman over tokens, one volume per model)\n")
    print("| model | tokens | removal | fast: forwards | fast vs full | estimate vs full | full: seconds | fast: seconds |")
    print("|---|---:|---|---:|---:|---:|---:|---:|", flush=True)
    for name in SAMPLE_MODELS:
        model = g3d.load_model(sample_path(f"{name}.safetensors"))
        if name == "fmri_task":
            from bench_quality import held_out

            volume = held_out(name, 1)[0][0]
        else:
            volume = np.asarray(nib.load(sample_path(f"{name}_example.nii.gz")).dataobj, dtype=np.float32)
        tokens = find_adapter(model).geometry.num_patches
        for removal in ("drop", "mean", "blur"):
            common = dict(method="occlusion", baseline=removal, threshold=None, device=device)
            started = time.perf_counter()
            full = g3d.explain(model, volume, occlusion="full", **common)
            full_s = time.perf_counter() - started
            started = time.perf_counter()
            fast = g3d.explain(model, volume, occlusion="fast", **common)
            fast_s = time.perf_counter() - started
            estimate = g3d.explain(model, volume, occlusion="estimate", **common)
            print(f"| {name} | {tokens} | {removal} | {fast.extra['forwards']} | "
                  f"{spearman(fast.token_map, full.token_map):.3f} | "
                  f"{spearman(estimate.token_map, full.token_map):.3f} | {full_s:.1f} | {fast_s:.2f} |", flush=True)


def untuned_models(seed: int = 5):
    """Two ViTs no method was tuned on, random weights, 216 tokens: vit-pytorch and MONAI."""
    from monai.networks.nets import ViT as MonaiViT

    config = dict(image_size=48, image_patch_size=8, frames=48, frame_patch_size=8, num_classes=3, dim=128,
                  depth=4, heads=4, mlp_dim=256, channels=1, dim_head=32)
    vit, _ = build(config, "cpu", seed)
    torch.manual_seed(seed)
    monai = MonaiViT(in_channels=1, img_size=(48, 48, 48), patch_size=(8, 8, 8), hidden_size=128, mlp_dim=256,
                     num_layers=4, num_heads=4, num_classes=3, classification=True).eval()
    return {"vit-pytorch (random weights)": vit, "MONAI ViT (random weights)": monai}


def agreement_table(device: str, volumes: int = 3) -> None:
    """How each map agrees with full occlusion (tokens dropped) of the same untuned model."""
    methods = {"cp-lrp": dict(method="cp-lrp"), "auto": dict(method="auto", rechoose=True),
               "occlusion (fast)": dict(method="occlusion"), "grad-rollout": dict(method="grad-rollout"),
               "hirescam @ first block": dict(method="hirescam", first=True),
               "g3dvit (published)": dict(method="g3dvit")}
    print(f"\n### Agreement with full occlusion on models no method was tuned on ({volumes} random volumes each)\n")
    print("| model | map | Spearman with full occlusion | top 5 % tokens shared with full occlusion |")
    print("|---|---|---:|---:|", flush=True)
    for name, model in untuned_models().items():
        rows = {label: ([], []) for label in methods}
        for seed in range(volumes):
            volume = torch.randn(48, 48, 48, generator=torch.Generator().manual_seed(100 + seed)).numpy()
            full = g3d.explain(model, volume, method="occlusion", occlusion="full", threshold=None,
                               device=device).token_map.ravel()
            top = max(1, round(0.05 * full.size))
            best = set(np.argsort(-full)[:top])
            for label, settings in methods.items():
                settings = dict(settings)
                if settings.pop("first", False):
                    settings["layer"] = find_adapter(model).attention_norm(0)
                tokens = g3d.explain(model, volume, threshold=None, device=device, **settings).token_map.ravel()
                rows[label][0].append(spearman(tokens, full))
                rows[label][1].append(len(best & set(np.argsort(-tokens)[:top])) / top)
        for label, (rho, shared) in rows.items():
            print(f"| {name} | {label} | {np.mean(rho):.2f} | {np.mean(shared):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-ranking", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-agreement", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if not args.skip_cost:
        cost_table("published fMRI-size ViT (90^3, patch 9, dim 1024, depth 6)", FMRI, args.device, args.repeats,
                   {"cp-lrp": 2, "occlusion (fast)": 30, "auto, first call": 5, "auto, later call": 3,
                    "all one-pass families (CAM + attention + cp-lrp), one call": 2})
        cost_table("512-token ViT (64^3, patch 8, dim 256, depth 6)", SMALL, args.device, args.repeats,
                   {"auto, first call": 5, "auto, later call": 3})
    if not args.skip_ranking:
        ranking_table(args.device)
    if not args.skip_agreement:
        agreement_table(args.device)


if __name__ == "__main__":
    main()
