"""Cost of every method on the published fMRI ViT, as ratios to forward-only inference.

Model: vit-pytorch 3D ViT, 90^3 input, patch 9 (1000 tokens + CLS), dim 1024, depth 6, heads 8,
mlp_dim 2048, random weights (LayerNorm affines randomised, as in bench_engine.py). One volume.
Every time is the median of ``--repeats`` runs after one warm-up, cases interleaved in rounds,
and every ratio divides two times of this run.

    python benchmarks/bench_methods.py                  # CPU
    python benchmarks/bench_methods.py --device cuda    # on a GPU
    python benchmarks/bench_methods.py --full-occlusion # also full occlusion (1000 forwards) and
                                                        # the fast ranking's Spearman with it
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

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import build, sync  # noqa: E402  (the same model and volume)

import napari_g3dvit as g3d  # noqa: E402
from napari_g3dvit.choice import choose_method  # noqa: E402
from napari_g3dvit.evaluation.metrics import spearman  # noqa: E402


def timed(fn, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--full-occlusion", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    device = args.device
    model, volume = build(device)
    volume = volume[0]
    inputs = volume[None, None].to(device)
    choice = choose_method(model, volume.numpy(), device=device)
    common = dict(device=device, threshold=None)
    kept: dict = {}  # the timed occlusion map, for its forward count and the comparison with full
    cases = {
        "forward only (inference)": lambda: model(inputs),
        "g3dvit (published default)": lambda: g3d.explain(model, volume, method="g3dvit", **common),
        "attention-rollout": lambda: g3d.explain(model, volume, method="attention-rollout", **common),
        "grad-rollout": lambda: g3d.explain(model, volume, method="grad-rollout", **common),
        "legrad": lambda: g3d.explain(model, volume, method="legrad", **common),
        "all CAM + attention methods, one call": lambda: g3d.explain(
            model, volume, method=list(g3d.METHODS[:8]), **common),
        "occlusion (fast)": lambda: kept.__setitem__("occlusion", g3d.explain(model, volume, method="occlusion",
                                                                               **common)),
        "integrated-gradients (32 steps)": lambda: g3d.explain(model, volume, method="integrated-gradients",
                                                              baseline="blur", **common),
        "auto (choice + chosen map)": lambda: g3d.explain(model, volume, method="auto", **common),
        "auto, choice reused": lambda: g3d.explain(model, volume, method=choice.method, layer=choice.layer, **common),
    }
    with torch.no_grad():  # warm-up of the shared paths (the slow cases warm themselves)
        cases["forward only (inference)"]()
    cases["g3dvit (published default)"]()
    print(f"\nfMRI ViT (90^3, 1000 tokens), {device}, torch {torch.__version__}, median of {args.repeats}\n")
    print(f"auto chose {choice.as_dict()['chosen']} on this volume\n")
    print("| case | seconds | x inference |")
    print("|---|---:|---:|", flush=True)
    base = None
    for name, fn in cases.items():  # each row as soon as it is measured
        runs = []
        for _ in range(args.repeats):
            if name == "forward only (inference)":
                with torch.no_grad():
                    runs.append(timed(fn, device))
            else:
                runs.append(timed(fn, device))
        seconds = statistics.median(runs)
        base = base or seconds
        print(f"| {name} | {seconds:.2f} | {seconds / base:.1f} |", flush=True)
    occ = kept["occlusion"]
    print(f"\nocclusion (fast) used {occ.extra['forwards']} perturbed forwards for 1000 tokens", flush=True)
    if args.full_occlusion:
        started = time.perf_counter()
        full = g3d.explain(model, volume, method="occlusion", occlusion="full", **common)
        seconds = time.perf_counter() - started
        print(f"occlusion (full, 1000 forwards): {seconds:.2f} s, {seconds / base:.1f} x inference; "
              f"fast vs full token ranking: Spearman {spearman(occ.token_map, full.token_map):.3f}")

if __name__ == "__main__":
    main()
