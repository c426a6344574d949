"""Train the Fashion-MNIST classifier whose features the offline Fréchet distance uses.

    python scripts/train_fid_classifier.py [--output checkpoints/fmnist_classifier.pt] [--epochs 4]
        [--seed 0] [--data-root DIR] [--threads 2] [--device cpu]

Trains :class:`~spectral_diffusion.evaluation.fmnist_classifier.FMNISTClassifier` on the
Fashion-MNIST train split (found as ``FashionMNISTDataModule`` finds it; ``--data-root`` points
elsewhere), deterministically, and measures its accuracy on the test split. With the defaults:
over 90% test accuracy in a few minutes on a 2-core CPU.

Writes, each atomically (temporary file, then rename):
- ``--output``: the weights, a plain state dict read by ``FMNISTFeatureExtractor`` with
  ``torch.load(weights_only=True)``;
- the same path with ``.json``: test accuracy, epochs, seed, wall time, thread count, torch
  version, weights hash, git revision.

The same seed, thread count, torch version and CPU type give bitwise the same weights. Exits
with status 1 (after saving) if the test accuracy is below 90%, the bar for using the features.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

from spectral_diffusion.data.fashion_mnist import DataNotFoundError, locate_fashion_mnist
from spectral_diffusion.evaluation.classifier_training import accuracy, load_fashion_mnist_images, train_classifier
from spectral_diffusion.evaluation.fmnist_classifier import DEFAULT_WEIGHTS, file_sha256
from spectral_diffusion.utils.checkpoint import AtomicCheckpointIO
from spectral_diffusion.utils.run import git_revision

log = logging.getLogger("train_fid_classifier")

MIN_TEST_ACCURACY = 0.90
BATCH_SIZE = 128
LR = 3e-3


def write_json_atomically(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_WEIGHTS, help="weights file (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads; part of what makes runs reproducible")
    parser.add_argument("--device", default="cpu", help="torch device; bitwise reproducibility is checked on cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.output.suffix != ".pt":
        parser.error(f"--output {args.output}: the weights file must end in .pt (its record goes beside it as .json)")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: must be >= 1")

    torch.set_num_threads(args.threads)
    try:
        folder = locate_fashion_mnist(args.data_root, download=False, download_dir=None)
    except DataNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    log.info("Fashion-MNIST from %s; %d threads, device %s", folder, torch.get_num_threads(), args.device)
    train_images, train_labels = load_fashion_mnist_images(folder, "train")
    test_images, test_labels = load_fashion_mnist_images(folder, "test")

    start = time.perf_counter()
    model = train_classifier(
        train_images, train_labels, epochs=args.epochs, seed=args.seed, batch_size=BATCH_SIZE, lr=LR, device=args.device
    )
    train_s = time.perf_counter() - start
    test_accuracy = accuracy(model, test_images, test_labels)
    log.info("test accuracy %.4f after %d epochs, %.0f s of training", test_accuracy, args.epochs, train_s)

    AtomicCheckpointIO().save_checkpoint({k: v.detach().cpu() for k, v in model.state_dict().items()}, args.output)
    record = {
        "test_accuracy": test_accuracy,
        "test_images": len(test_images),
        "train_images": len(train_images),
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": BATCH_SIZE,
        "lr": LR,
        "num_features": model.num_features,
        "train_time_s": round(train_s, 1),
        "threads": torch.get_num_threads(),
        "device": str(args.device),
        "deterministic_algorithms": True,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "data_folder": str(folder),
        "weights_sha256": file_sha256(args.output),
        "git": git_revision(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomically(args.output.with_suffix(".json"), record)
    log.info("wrote %s and %s", args.output, args.output.with_suffix(".json"))
    if test_accuracy < MIN_TEST_ACCURACY:
        log.error("test accuracy %.4f is below %.2f: train longer (--epochs)", test_accuracy, MIN_TEST_ACCURACY)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
