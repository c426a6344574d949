"""Deterministic training of the Fashion-MNIST feature classifier (:class:`FMNISTClassifier`).

Shared by ``scripts/train_fid_classifier.py``, the first-use training of the default weights
(``fmnist_weights.py``) and the tests. The feature space defines every Fréchet distance measured
with it, so the weights must be reproducible: the same recipe (:class:`ClassifierRecipe`: seed,
epochs, batch, learning rate, thread count), data, torch version and machine type give bitwise the
same weights. To that end

- the model is initialised, and dropout drawn, from a private RNG stream seeded by ``seed``
  (the caller's global RNG state is left untouched);
- batches are shuffled and flipped with a ``torch.Generator`` seeded by ``seed``;
- ``torch.use_deterministic_algorithms(True)`` is on during training (restored afterwards).

CPU results can still differ between thread counts (reductions are split differently), which is
why :func:`train_and_save` fixes the thread count for the training and records it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from spectral_diffusion.data.fashion_mnist import GrayscaleImageDataset, load_split
from spectral_diffusion.evaluation.fmnist_classifier import IMAGE_SHAPE, FMNISTClassifier
from spectral_diffusion.utils.checkpoint import write_bytes_atomically
from spectral_diffusion.utils.run import git_revision

log = logging.getLogger(__name__)

#: The test accuracy below which the features are not fit to measure with (the recipe's default
#: reaches about 92% on the real data).
MIN_TEST_ACCURACY = 0.90


@dataclasses.dataclass(frozen=True)
class ClassifierRecipe:
    """Everything besides the data and the machine that fixes the classifier's weights bitwise.

    The defaults make the framework's default weights: ``scripts/train_fid_classifier.py`` with
    no overrides and the first-use training of ``fmnist_weights.py`` give the same file.

    Args:
        epochs: passes over the 60k training images.
        seed: initialisation, dropout, shuffling and flips.
        batch_size: images per step (the last incomplete batch of an epoch is dropped).
        lr: peak learning rate of the one-cycle schedule.
        threads: CPU threads during training; the weights depend on it, so it is fixed, not inherited.
        device: where to train; bitwise reproducibility holds on ``cpu``.
    """

    epochs: int = 4
    seed: int = 0
    batch_size: int = 128
    lr: float = 3e-3
    threads: int = 2
    device: str = "cpu"


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
            # Channels-last: oneDNN's fast convolution and pooling kernels, ~1.8x faster training on a CPU.
            model = FMNISTClassifier(width=width, num_features=num_features).to(
                device, memory_format=torch.channels_last
            )
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
            x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(device, memory_format=torch.channels_last)
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


def train_and_save(folder: Path, output: Path, recipe: ClassifierRecipe = ClassifierRecipe()) -> dict[str, Any]:
    """Train on the Fashion-MNIST IDX files in ``folder``, test, and write the weights and their record.

    Writes, each atomically (:func:`write_bytes_atomically`):

    - ``output`` (``.pt``): a plain state dict, read by ``FMNISTFeatureExtractor`` with
      ``torch.load(weights_only=True)``;
    - ``output`` with ``.json``: test accuracy, the recipe, wall time, thread count, torch version,
      weights hash, git revision. It is written first: the weights' rename is what makes the pair
      visible to a reader that checks for the weights.

    Returns the record. The caller's thread count is restored afterwards.
    """
    output = Path(output)
    if output.suffix != ".pt":
        raise ValueError(f"{output}: the weights file must end in .pt (its record goes beside it as .json)")
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        train_images, train_labels = load_fashion_mnist_images(folder, "train")
        test_images, test_labels = load_fashion_mnist_images(folder, "test")
        start = time.perf_counter()
        model = train_classifier(
            train_images,
            train_labels,
            epochs=recipe.epochs,
            seed=recipe.seed,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            device=recipe.device,
        )
        train_s = time.perf_counter() - start
        test_accuracy = accuracy(model, test_images, test_labels)
    finally:
        torch.set_num_threads(threads)
    log.info("test accuracy %.4f after %d epochs, %.0f s of training", test_accuracy, recipe.epochs, train_s)

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    weights = buffer.getvalue()
    record = {
        "test_accuracy": test_accuracy,
        "test_images": len(test_images),
        "train_images": len(train_images),
        "epochs": recipe.epochs,
        "seed": recipe.seed,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "num_features": model.num_features,
        "train_time_s": round(train_s, 1),
        "threads": recipe.threads,
        "device": str(recipe.device),
        "deterministic_algorithms": True,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "data_folder": str(folder),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "git": git_revision(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_bytes_atomically(output.with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())
    write_bytes_atomically(output, weights)
    return record
