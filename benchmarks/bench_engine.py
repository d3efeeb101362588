"""Speed and memory of ``explain`` on the published fMRI ViT, as ratios to inference.

Model: vit-pytorch 3D ViT, 90^3 input, patch 9 (1000 tokens + CLS), dim 1024, depth 6,
heads 8, mlp_dim 2048, random weights. Every time is the median of ``--repeats`` runs after
one warm-up; the cases run in interleaved rounds (each case once per round), so a slow spell
of a shared machine falls on all of them alike, and every ratio divides two times of this run.

    python benchmarks/bench_engine.py                 # CPU, one volume, batch of 16, memory
    python benchmarks/bench_engine.py --device cuda   # on a GPU

Peak memory: on CUDA, ``max_memory_allocated`` above what was allocated before the case; on
the CPU, the highest resident memory sampled every millisecond during the case, above the level
just before it. Each case is measured once in a fresh child process.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
import warnings

import torch
from torch import nn

import napari_g3dvit as g3d

FMRI = dict(image_size=90, image_patch_size=9, frames=90, frame_patch_size=9, num_classes=2,
            dim=1024, depth=6, heads=8, mlp_dim=2048, channels=1, dim_head=64)
LAYER = "transformer.layers.5.0.norm"


def build(device: str) -> tuple[nn.Module, torch.Tensor]:
    from vit_pytorch.vit_3d import ViT

    torch.manual_seed(0)
    model = ViT(**FMRI)
    with torch.no_grad():  # trained-looking LayerNorm affines, so g3dvit maps are not empty
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
    return model.eval().to(device), torch.randn(1, 90, 90, 90)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
    """[B, 1001, C] -> [B, C, 10, 10, 10] for the peer libraries."""
    return t[:, 1:].reshape(t.shape[0], 10, 10, 10, t.shape[2]).permute(0, 4, 1, 2, 3)


def make_cases(model: nn.Module, volume: torch.Tensor, device: str, batch: int):
    """name -> zero-argument callable doing the work once."""
    x1 = volume[None].to(device)
    xb = volume.expand(batch, -1, -1, -1).contiguous()
    xb5 = xb[:, None].to(device)
    cases = {}

    def infer(x):
        with torch.inference_mode():
            model(x)

    cases["inference, 1 volume"] = lambda: infer(x1)
    for method in g3d.METHODS:
        cases[f"explain {method}"] = lambda m=method: g3d.explain(model, volume[0], method=m, device=device)
    cases["explain, all 5 methods in one call"] = lambda: g3d.explain(
        model, volume[0], method=list(g3d.METHODS), device=device)

    def full_backward():  # the published procedure: loss.backward() through the whole model
        kept = {}

        def keep(_module, _inputs, output):
            output.retain_grad()
            kept["a"] = output

        h = dict(model.named_modules())[LAYER].register_forward_hook(keep)
        try:
            logits = model(x1)
            logits[0, int(logits.argmax())].backward()
        finally:
            h.remove()
            model.zero_grad(set_to_none=True)
        g, a = kept["a"].grad, kept["a"]
        return (g.mean(-1) * a.sum(-1)).detach()

    cases["published procedure (full backward), g3dvit"] = full_backward

    try:
        from pytorch_grad_cam import GradCAM as PGCGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc = PGCGradCAM(model=model, target_layers=[dict(model.named_modules())[LAYER]],
                         reshape_transform=tokens_to_grid)

        def run_pgc():
            with torch.no_grad():
                cls = int(model(x1).argmax())
            pgc(input_tensor=x1, targets=[ClassifierOutputTarget(cls)])

        cases["pytorch-grad-cam GradCAM"] = run_pgc
    except ImportError:
        pass
    try:
        from torchcam.methods import GradCAM as TCGradCAM

        def run_torchcam():
            with TCGradCAM(model, target_layer=LAYER, input_shape=(1, 90, 90, 90),
                           reshape_transform=tokens_to_grid) as extractor:
                out = model(x1)
                extractor(int(out.argmax()), out)

        cases["torch-cam GradCAM"] = run_torchcam
    except ImportError:
        pass

    cases[f"inference, batch of {batch}"] = lambda: infer(xb5)
    cases[f"explain g3dvit, batch of {batch}"] = lambda: g3d.explain(
        model, xb, method="g3dvit", device=device, batch_size=batch)
    return cases


def timed_rounds(cases: dict, names: list[str], rounds: int, device: str) -> dict[str, float]:
    """Median seconds per case, running ``names`` in interleaved rounds after one warm-up each."""
    for name in names:
        cases[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            start = time.perf_counter()
            cases[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def peak_memory_child(case: str, device: str, batch: int) -> None:
    """Run one case once in this (child) process and print its extra peak memory in MiB."""
    model, volume = build(device)
    fn = make_cases(model, volume, device, batch)[case]
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _resident_bytes()
        highest = [base]
        done = threading.Event()

        def sample():
            while not done.is_set():
                highest[0] = max(highest[0], _resident_bytes())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        fn()
        done.set()
        sampler.join()
        peak = max(highest[0], _resident_bytes()) - base
    print(json.dumps({"mib": peak / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batch-repeats", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.memory_case:
        peak_memory_child(args.memory_case, args.device, args.batch)
        return

    model, volume = build(args.device)
    cases = make_cases(model, volume, args.device, args.batch)
    single = [n for n in cases if "batch" not in n]
    batched = [n for n in cases if "batch" in n]
    seconds = timed_rounds(cases, single, args.repeats, args.device)
    seconds.update(timed_rounds(cases, batched, args.batch_repeats, args.device))
    rows = []
    for name in cases:
        mib = None
        if not args.no_memory:
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--batch",
                                  str(args.batch), "--memory-case", name],
                                 capture_output=True, text=True, check=True)
            mib = json.loads(out.stdout.strip().splitlines()[-1])["mib"]
        rows.append((name, seconds[name], mib))

    one = dict((n, s) for n, s, _ in rows)["inference, 1 volume"]
    batch_infer = dict((n, s) for n, s, _ in rows)[f"inference, batch of {args.batch}"]
    print(f"\nG3D-ViT fMRI model (90^3, patch 9, dim 1024, depth 6), device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.repeats} interleaved rounds (batches: {args.batch_repeats})\n")
    print("| case | seconds | x inference | extra peak memory (MiB) |")
    print("|---|---:|---:|---:|")
    for name, seconds, mib in rows:
        ref = batch_infer if "batch" in name else one
        mem = "-" if mib is None else f"{mib:.0f}"
        print(f"| {name} | {seconds:.3f} | {seconds / ref:.2f} | {mem} |")
    explain_b = dict((n, s) for n, s, _ in rows)[f"explain g3dvit, batch of {args.batch}"]
    print(f"\nbatched throughput, explain / inference: {batch_infer / explain_b:.2f}x")
    times = dict((n, s) for n, s, _ in rows)
    for peer in ("pytorch-grad-cam GradCAM", "torch-cam GradCAM"):
        if peer in times:
            print(f"{peer} time / explain gradcam time: {times[peer] / times['explain gradcam']:.2f}")


if __name__ == "__main__":
    main()
