"""Where the offline Fashion-MNIST extractor's weights come from: a given file, or the default
weights, trained once on first use and cached per user.

With a ``weights_path``, that file is used, and a missing one is an error (never a silent
substitute: other weights measure in another feature space). Without one, the default weights are,
in this order:

1. :data:`~.fmnist_classifier.DEFAULT_WEIGHTS` (``checkpoints/fmnist_classifier.pt`` relative to
   the current working directory), if it exists: where earlier versions put them;
2. ``<cache>/fmnist_classifier.pt``, the cache being ``$SPECTRAL_DIFFUSION_CACHE``, else
   ``$XDG_CACHE_HOME/spectral_diffusion``, else ``~/.cache/spectral_diffusion`` (``utils/cache.py``);
3. if neither exists, trained now into 2 (with its ``.json`` record) by
   :func:`~.classifier_training.train_and_save` with the default :class:`ClassifierRecipe` (4
   epochs, seed 0, 2 CPU threads: about 3 minutes on a 2-core CPU), on Fashion-MNIST found as
   ``FashionMNISTDataModule`` finds it (``/usr/share/datasets/fashion-mnist``, then ``data/``
   below the working directory, downloaded there by torchvision if it is missing and the machine
   is online). This is exactly ``python scripts/train_fid_classifier.py`` with no overrides.

Feature statistics are keyed by the hash of the weights (the extractor's ``identity``), so
statistics made with other weights are refused, whichever of the three the weights came from.

Concurrent first uses (the ranks of a DDP run, parallel evaluations) train once: the first takes
an exclusive lock on ``<cache>/.fmnist_classifier.pt.lock`` and trains; the others wait for the
lock and then find the weights. Both files are written atomically (unique temporary, fsync,
rename), so no reader ever sees a torn file, even where the file system offers no locks and two
processes end up training (they then write the same bytes, as training is deterministic).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from spectral_diffusion.data.base import DataNotFoundError
from spectral_diffusion.data.fashion_mnist import locate_fashion_mnist
from spectral_diffusion.evaluation.classifier_training import MIN_TEST_ACCURACY, ClassifierRecipe, train_and_save
from spectral_diffusion.evaluation.fmnist_classifier import CACHED_WEIGHTS_NAME, DEFAULT_WEIGHTS, TRAIN_COMMAND
from spectral_diffusion.utils.cache import CACHE_ENV, user_cache_dir

log = logging.getLogger(__name__)

#: The recipe of the default weights (module doc).
DEFAULT_RECIPE = ClassifierRecipe()
#: Where Fashion-MNIST is looked for (and downloaded to) after the Debian folder, relative to the
#: working directory: ``paths.data_dir``'s default, so a quickstart's download is found.
DATA_DIR = Path("data")


def cached_weights_path() -> Path:
    """``<cache>/fmnist_classifier.pt``: where the default weights are trained to (module doc)."""
    return user_cache_dir() / CACHED_WEIGHTS_NAME


def resolve_weights(weights_path: str | Path | None) -> Path:
    """``weights_path`` as given (the extractor reports one that does not exist), or, for ``None``,
    the default weights, trained on first use (:func:`default_weights`)."""
    if weights_path is not None:
        return Path(weights_path).expanduser()
    return default_weights()


def default_weights(
    cache_path: Path | None = None,
    data_root: str | Path | None = None,
    recipe: ClassifierRecipe | None = None,
    download: bool = True,
) -> Path:
    """The default weights file, found or trained now (module doc).

    Args:
        cache_path: the cached weights file (default :func:`cached_weights_path`).
        data_root: a folder with the Fashion-MNIST IDX files (default: the standard places).
        recipe: how to train them if they do not exist (default :data:`DEFAULT_RECIPE`).
        download: whether torchvision may download Fashion-MNIST if it is found nowhere.
    """
    if DEFAULT_WEIGHTS.is_file():
        log.info("fmnist_classifier: using the repository-local weights %s", DEFAULT_WEIGHTS.absolute())
        return DEFAULT_WEIGHTS
    path = Path(cache_path) if cache_path is not None else cached_weights_path()
    if path.is_file():
        log.info("fmnist_classifier: using the cached weights %s", path)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # the same type (PermissionError, ...), with the remedy added
        raise type(err)(
            f"cannot create the cache directory {path.parent} for the fmnist_classifier weights ({err}); "
            f"set {CACHE_ENV}=DIR to a writable directory"
        ) from err
    with _exclusive(path.with_name(f".{path.name}.lock")):
        if path.is_file():  # another process trained them while this one waited for the lock
            log.info("fmnist_classifier: using the weights %s that another process has just trained", path)
            return path
        _train_into(path, data_root, recipe or DEFAULT_RECIPE, download)
    return path


def _train_into(path: Path, data_root: str | Path | None, recipe: ClassifierRecipe, download: bool) -> None:
    try:
        folder = locate_fashion_mnist(data_root, download=download, download_dir=DATA_DIR)
    except DataNotFoundError as err:
        raise DataNotFoundError(
            f"the fmnist_classifier feature extractor has no weights yet ({path} does not exist) and trains "
            f"them on first use, which needs Fashion-MNIST. {err}\n"
            f"  - or train them from a folder of your own: {TRAIN_COMMAND} data_root=DIR"
        ) from err
    log.info(
        "fmnist_classifier: no weights at %s or %s; training them once now (later runs reuse them): "
        "%d epochs, seed %d, batch %d, lr %g, %d CPU threads, device %s, on Fashion-MNIST from %s. "
        "This takes about 3 minutes on a 2-core CPU.",
        DEFAULT_WEIGHTS.absolute(),
        path,
        recipe.epochs,
        recipe.seed,
        recipe.batch_size,
        recipe.lr,
        recipe.threads,
        recipe.device,
        folder,
    )
    start = time.perf_counter()
    record = train_and_save(folder, path, recipe)
    log.info(
        "fmnist_classifier: trained in %.0f s, test accuracy %.4f; wrote %s (sha256 %s) and its record %s",
        time.perf_counter() - start,
        record["test_accuracy"],
        path,
        record["weights_sha256"][:12],
        path.with_suffix(".json"),
    )
    if record["test_accuracy"] < MIN_TEST_ACCURACY:
        log.warning(
            "fmnist_classifier: test accuracy %.4f is below %.2f; distances in this feature space say little "
            "(is %s the real Fashion-MNIST?)",
            record["test_accuracy"],
            MIN_TEST_ACCURACY,
            folder,
        )


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (waiting for it, and saying so), where there is one.

    Without locks (not POSIX, or a file system that refuses them) it goes on unlocked: the atomic
    writes keep the cache whole, and only the work may be done twice.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None
    with contextlib.ExitStack() as stack:
        if fcntl is not None:
            handle = stack.enter_context(open(lock_path, "a+b"))
            try:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info(
                        "fmnist_classifier: another process is training the weights (%s is locked); waiting", lock_path
                    )
                    fcntl.flock(handle, fcntl.LOCK_EX)
                stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
            except OSError as err:
                log.warning("cannot lock %s (%s); going on without the lock", lock_path, err)
        yield
