"""Deterministic training of the Fashion-MNIST feature classifier (:class:`FMNISTClassifier`).

Shared by ``scripts/train_fid_classifier.py`` and the tests. The feature space defines every
Fréchet distance measured with it, so the weights must be reproducible: the same seed, data,
thread count and machine type give bitwise the same weights. To that end

- the model is initialised, and dropout drawn, from a private RNG stream seeded by ``seed``
  (the caller's global RNG state is left untouched);
- batches are shuffled and flipped with a ``torch.Generator`` seeded by ``seed``;
- ``torch.use_deterministic_algorithms(True)`` is on during training (restored afterwards).

CPU results can still differ between thread counts (reductions are split differently), which is
why the script fixes and records the thread count.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from spectral_diffusion.data.fashion_mnist import GrayscaleImageDataset, load_split
from spectral_diffusion.evaluation.fmnist_classifier import IMAGE_SHAPE, FMNISTClassifier

log = logging.getLogger(__name__)


def load_fashion_mnist_images(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as ``(images float (N, 1, 32, 32) in [-1, 1], labels int64 (N,))`` in memory.

    The images go through the framework's own :class:`GrayscaleImageDataset`, so the classifier
    sees exactly the format that diffusion models are trained on and sample in.
    """
    dataset = GrayscaleImageDataset(*load_split(folder, split), pad_to=IMAGE_SHAPE[-1], random_flip=False)
    images, labels = zip(*DataLoader(dataset, batch_size=4096, shuffle=False), strict=True)
    return torch.cat(images), torch.cat(labels)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    width: int = 32,
    num_features: int = 128,
    device: torch.device | str = "cpu",
) -> FMNISTClassifier:
    """Train a fresh :class:`FMNISTClassifier` on ``images`` / ``labels`` and return it (in eval mode).

    AdamW with a one-cycle learning-rate schedule (peak ``lr``), cross-entropy, random horizontal
    flips; the last incomplete batch of each epoch is dropped. Deterministic for a given ``seed``
    (module doc).
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"images must have shape (N, {', '.join(map(str, IMAGE_SHAPE))}), got {tuple(images.shape)}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    steps_per_epoch = len(images) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} is larger than the {len(images)} training images")

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only: on GPUs a few kernels have no deterministic version; CPU training is exact.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        # Fork the CPU stream, and the CUDA ones when training there, since manual_seed reseeds both.
        with torch.random.fork_rng(devices=[] if torch.device(device).type == "cpu" else None):
            torch.manual_seed(seed)
            model = FMNISTClassifier(width=width, num_features=num_features).to(device)
            _fit(model, images, labels, epochs, steps_per_epoch, batch_size, lr, weight_decay, seed, device)
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
    return model.eval()


def _fit(
    model: FMNISTClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device | str,
) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss = torch.zeros((), dtype=torch.float64)
        correct = 0
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            x, y = images[index], labels[index]
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(device)
            y = y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.detach().double().cpu()
            correct += int((logits.argmax(1) == y).sum())
        log.info(
            "epoch %d/%d: train loss %.4f, train accuracy %.4f, %.0f s",
            epoch + 1,
            epochs,
            total_loss.item() / steps_per_epoch,
            correct / (steps_per_epoch * batch_size),
            time.perf_counter() - start,
        )


@torch.no_grad()
def accuracy(model: FMNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` that ``model`` (put in eval mode) classifies as ``labels``."""
    model.eval()
    device = next(model.parameters()).device
    correct = sum(
        int((model(x.to(device)).argmax(1) == y.to(device)).sum())
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True)
    )
    return correct / len(images)
