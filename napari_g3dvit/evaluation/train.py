"""Training small vit-pytorch 3D ViTs on the synthetic tasks, with a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

Batches = Callable[[int], tuple[np.ndarray, np.ndarray]]  # epoch -> (volumes [n,D,H,W], labels [n])


@dataclass
class TrainResult:
    model: nn.Module
    validation_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def build_vit(vit_config: dict) -> nn.Module:
    from ..models.vit_pytorch3d import import_vit3d

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in vit_config.items()}
    return import_vit3d().ViT(**kwargs)


def accuracy(model: nn.Module, volumes: np.ndarray, labels: np.ndarray, device: torch.device,
             batch_size: int = 32) -> float:
    model.eval()
    hits = 0
    with torch.inference_mode():
        for start in range(0, len(volumes), batch_size):
            x = torch.as_tensor(volumes[start : start + batch_size])[:, None].to(device)
            pred = model(x).argmax(1).cpu().numpy()
            hits += int((pred == labels[start : start + batch_size]).sum())
    return hits / len(volumes)


def train_classifier(model: nn.Module, training_data: Batches, validation: tuple[np.ndarray, np.ndarray],
                     epochs: int = 20, batch_size: int = 16, lr: float = 1e-4, weight_decay: float = 0.01,
                     device: str = "cpu", seed: int = 0, progress: bool = True, desc: str = "training",
                     target_accuracy: float | None = None) -> TrainResult:
    """AdamW with a one-cycle schedule; ``training_data(epoch)`` gives that epoch's samples.

    Stops early once the validation accuracy reaches ``target_accuracy`` (when given).
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    dev = torch.device(device)
    model.to(dev)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    first_epoch = training_data(0)
    steps_per_epoch = int(np.ceil(len(first_epoch[0]) / batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()
    history, started = [], time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, unit="step")
    val_acc = 0.0
    for epoch in range(epochs):
        volumes, labels = first_epoch if epoch == 0 else training_data(epoch)
        order = np.random.default_rng(seed + epoch).permutation(len(volumes))
        model.train()
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = torch.as_tensor(volumes[idx])[:, None].to(dev)
            y = torch.as_tensor(labels[idx]).to(dev)
            loss = loss_fn(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
        val_acc = accuracy(model, *validation, dev)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "validation_accuracy": val_acc})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_acc=f"{val_acc:.3f}")
        if target_accuracy is not None and val_acc >= target_accuracy:
            break
    bar.close()
    model.eval().cpu()
    return TrainResult(model, val_acc, history, time.perf_counter() - started)
