"""The offline extractor's weights: trained once on first use, cached, reused, never torn or
substituted; and scripts/train_fid_classifier.py, which writes the same file through the same code."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import spectral_diffusion.data.fashion_mnist as fashion_mnist
from spectral_diffusion.data.base import DataNotFoundError
from spectral_diffusion.evaluation import fmnist_weights
from spectral_diffusion.evaluation.classifier_training import ClassifierRecipe
from spectral_diffusion.evaluation.extractors import build_feature_extractor
from spectral_diffusion.evaluation.fmnist_classifier import FMNISTClassifier, FMNISTFeatureExtractor, file_sha256
from spectral_diffusion.utils.cache import user_cache_dir

from .conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
#: The fixture has 64 training images: batches of 16, one epoch, one thread (seconds, not minutes).
TINY = ClassifierRecipe(epochs=1, batch_size=16, threads=1)


@pytest.fixture
def fresh_machine(tmp_path, monkeypatch, fmnist_root) -> Path:
    """No repository-local weights, an empty cache, and the tiny Fashion-MNIST where Debian puts it."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPECTRAL_DIFFUSION_CACHE", str(cache))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", fmnist_root)
    monkeypatch.setattr(fmnist_weights, "DEFAULT_RECIPE", TINY)
    return cache


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECTRAL_DIFFUSION_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SPECTRAL_DIFFUSION_CACHE")
    assert user_cache_dir() == tmp_path / "xdg" / "spectral_diffusion"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # XDG: relative values are invalid
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "spectral_diffusion"
    assert fmnist_weights.cached_weights_path() == tmp_path / "home" / ".cache" / "spectral_diffusion" / (
        "fmnist_classifier.pt"
    )


def test_first_use_trains_and_caches_the_weights_and_the_second_reuses_them(fresh_machine, fmnist_root, caplog):
    with caplog.at_level(logging.INFO):
        extractor = build_feature_extractor("fmnist_classifier")
    weights = fresh_machine / "fmnist_classifier.pt"
    record = json.loads(weights.with_suffix(".json").read_text())
    assert record["weights_sha256"] == file_sha256(weights)
    assert (record["epochs"], record["seed"], record["batch_size"], record["threads"]) == (1, 0, 16, 1)
    assert (record["train_images"], record["test_images"]) == (64, 32) and record["data_folder"] == str(fmnist_root)
    # Statistics are keyed by the weights' hash, whichever way the weights came.
    assert extractor.identity == f"fmnist_classifier-{record['weights_sha256'][:12]}"
    assert "training them once now" in caplog.text and f"Fashion-MNIST from {fmnist_root}" in caplog.text
    assert "trained in" in caplog.text and "test accuracy" in caplog.text
    assert sorted(p.name for p in fresh_machine.iterdir()) == [
        ".fmnist_classifier.pt.lock",
        "fmnist_classifier.json",
        "fmnist_classifier.pt",
    ]  # no temporaries left
    features = extractor(torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8))
    assert features.shape == (3, 128)

    mtime = weights.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = build_feature_extractor("fmnist_classifier")
    assert again.identity == extractor.identity and weights.stat().st_mtime_ns == mtime
    assert "training" not in caplog.text and f"using the cached weights {weights}" in caplog.text


def test_repository_local_weights_are_still_read_first(fresh_machine, tmp_path):
    local = tmp_path / "checkpoints" / "fmnist_classifier.pt"
    local.parent.mkdir()
    torch.manual_seed(0)
    torch.save(FMNISTClassifier(width=8, num_features=16).state_dict(), local)
    extractor = build_feature_extractor("fmnist_classifier")
    assert extractor.identity == f"fmnist_classifier-{file_sha256(local)[:12]}" and extractor.num_features == 16
    assert not fresh_machine.exists()  # nothing trained


def test_a_given_weights_path_that_does_not_exist_stays_an_error(fresh_machine, tmp_path):
    missing = tmp_path / "elsewhere" / "cls.pt"
    with pytest.raises(FileNotFoundError) as info:
        build_feature_extractor("fmnist_classifier", missing)
    message = str(info.value)
    assert str(missing) in message and f"python scripts/train_fid_classifier.py output={missing}" in message
    assert "weights_path=null" in message and str(fresh_machine / "fmnist_classifier.pt") in message
    assert not fresh_machine.exists()  # never replaced by the default weights


def test_without_fashion_mnist_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no_debian_package")
    with pytest.raises(DataNotFoundError) as info:
        fmnist_weights.default_weights(tmp_path / "cache" / "cls.pt", recipe=TINY, download=False)
    message = str(info.value)
    assert "trains them on first use, which needs Fashion-MNIST" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "python scripts/train_fid_classifier.py data_root=DIR" in message
    assert not (tmp_path / "cache" / "cls.pt").exists()


def test_the_same_seed_gives_bitwise_the_same_weights(tmp_path, fmnist_root):
    first = fmnist_weights.default_weights(tmp_path / "a" / "cls.pt", fmnist_root, TINY)
    second = fmnist_weights.default_weights(tmp_path / "b" / "cls.pt", fmnist_root, TINY)
    other = fmnist_weights.default_weights(
        tmp_path / "c" / "cls.pt", fmnist_root, ClassifierRecipe(1, 1, 16, threads=1)
    )
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()  # the seed matters


def test_concurrent_first_uses_train_once(tmp_path, fmnist_root, monkeypatch, caplog):
    """Two first uses at once (two DDP ranks): one trains, the other waits for it and reads its file."""
    calls = []
    real = fmnist_weights.train_and_save

    def slow_training(*args, **kwargs):
        calls.append(threading.current_thread().name)
        time.sleep(2.0)  # long enough for the other thread to find the lock taken, even on a busy CPU
        return real(*args, **kwargs)

    monkeypatch.setattr(fmnist_weights, "train_and_save", slow_training)
    cache = tmp_path / "cache" / "fmnist_classifier.pt"
    start = threading.Barrier(2)
    results: dict[str, Path] = {}

    def first_use(name: str) -> None:
        start.wait()
        results[name] = fmnist_weights.default_weights(cache, fmnist_root, TINY)

    threads = [threading.Thread(target=first_use, args=(f"rank{r}",), name=f"rank{r}") for r in (0, 1)]
    with caplog.at_level(logging.INFO):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert len(calls) == 1 and results == {"rank0": cache, "rank1": cache}
    assert "is locked); waiting" in caplog.text and "that another process has just trained" in caplog.text
    assert (
        FMNISTFeatureExtractor(cache).weights_sha256
        == json.loads(cache.with_suffix(".json").read_text())["weights_sha256"]
    )
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


# --- scripts/train_fid_classifier.py ----------------------------------------------------------------


def load_script():
    spec = importlib.util.spec_from_file_location("train_fid_classifier", ROOT / "scripts" / "train_fid_classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_writes_the_same_weights_as_the_first_use(fmnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRAL_DIFFUSION_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "out" / "cls.pt"
    overrides = [f"data_root={fmnist_root}", "download=false", "epochs=1", "batch_size=16", "threads=1"]
    cfg = compose_config("train_fid_classifier", tmp_path, [f"output={output}", *overrides])
    record = load_script().train_fid_classifier(cfg)
    assert json.loads(output.with_suffix(".json").read_text()) == record
    assert (record["epochs"], record["seed"], record["test_images"], record["train_images"]) == (1, 0, 32, 64)
    assert record["batch_size"] == 16 and record["torch_version"] == torch.__version__ and record["threads"] == 1
    assert FMNISTFeatureExtractor(output).weights_sha256 == record["weights_sha256"]
    assert sorted(p.name for p in output.parent.iterdir()) == ["cls.json", "cls.pt"]
    # One code path: the first use of the extractor, with the same recipe, writes the same bytes.
    first_use = fmnist_weights.default_weights(tmp_path / "first_use" / "cls.pt", fmnist_root, TINY)
    assert first_use.read_bytes() == output.read_bytes()
    # output=null: the cache, where the extractor looks for the default weights.
    record = load_script().train_fid_classifier(compose_config("train_fid_classifier", tmp_path, overrides))
    assert file_sha256(tmp_path / "cache" / "fmnist_classifier.pt") == record["weights_sha256"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=0", "epochs=0 must be a positive integer"),
        ("output=cls.pth", "output=cls.pth: the weights file must end in .pt"),
        ("lr=-1", "lr=-1 must be a positive number"),
    ],
)
def test_script_config_errors_name_the_key(tmp_path, override, message):
    cfg, script = compose_config("train_fid_classifier", tmp_path, [override]), load_script()
    with pytest.raises(script.ConfigError, match=message):
        script.train_fid_classifier(cfg)


def test_script_command_line_exits_with_a_message_naming_the_key(tmp_path):
    env = dict(os.environ, SPECTRAL_DIFFUSION_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_fid_classifier.py"), "threads=0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "threads=0 must be a positive integer" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "logs" / "train_fid_classifier").is_dir() and not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="needs the real Fashion-MNIST in /usr/share/datasets")
def test_script_reaches_90_percent_on_real_fashion_mnist(tmp_path):
    cfg = compose_config("train_fid_classifier", tmp_path, [f"output={tmp_path / 'cls.pt'}"])
    assert load_script().train_fid_classifier(cfg)["test_accuracy"] >= 0.9
