"""Exact resume: the resumable sampler, a SIGKILL at a random step, and preemption signals."""

from __future__ import annotations

import os
import pickle
import random
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from spectral_diffusion.data.fashion_mnist import GrayscaleImageDataset, load_split
from spectral_diffusion.data.resumable_sampler import (
    AugmentationKey,
    ResumableDataLoader,
    ResumableSampler,
    epoch_permutation,
)
from spectral_diffusion.data.worker_rng import WorkerRandom, keyed_generator
from tests.train_subprocess import (
    assert_same_training_state,
    describe,
    kill_then_rerun,
    load,
    run_train,
    tiny_overrides,
)
from train import train

# Every 2 steps a checkpoint; 8 batches of 8 per epoch (64 images), so 12 steps cross an epoch;
# warm-up and dropout make a lost step of the LR schedule or of the dropout stream visible, and
# random flips one of the augmentation (which must not depend on the loader workers' seeds).
RESUME_SETTINGS = (
    "trainer.max_steps=12",
    "data.random_flip=true",
    "data.batch_size=8",
    "module.warmup_steps=5",
    "model.dropout=0.1",
    "trainer.val_check_interval=4",
    "callbacks.sample_grid.every_n_steps=0",
    "callbacks.sample_grid.num_samples=2",
)


# -- the sampler ------------------------------------------------------------------------------------
def test_sampler_order_depends_on_seed_and_epoch_only():
    a = ResumableSampler(40, 4, seed=3)
    first = list(a)
    assert sorted(first) == list(range(40)) and first == epoch_permutation(40, 3, 0).tolist()
    assert list(a) == epoch_permutation(40, 3, 1).tolist() != first  # exhausted: the next epoch
    assert list(ResumableSampler(40, 4, seed=3)) == first
    assert list(ResumableSampler(40, 4, seed=4)) != first


def test_ranks_and_accumulation_split_each_step_into_the_same_images():
    """2 ranks x 2 per device, or 1 rank accumulating 2 x 2: each optimizer step sees the same 4 images."""
    ranks = [list(ResumableSampler(20, 2, num_replicas=2, rank=r, seed=0)) for r in (0, 1)]
    single = list(ResumableSampler(20, 2, accumulate=2, seed=0))
    order = epoch_permutation(20, 0, 0).tolist()
    assert len(ranks[0]) == len(ranks[1]) == 10 and len(single) == 20
    for step in range(5):
        ddp_step = ranks[0][2 * step : 2 * step + 2] + ranks[1][2 * step : 2 * step + 2]
        assert ddp_step == single[4 * step : 4 * step + 4] == order[4 * step : 4 * step + 4]
    assert not set(ranks[0]) & set(ranks[1])  # no image on two ranks


def test_epoch_is_a_whole_number_of_optimizer_steps():
    sampler = ResumableSampler(23, 2, num_replicas=2, accumulate=2, seed=0)
    assert sampler.batches_per_epoch == 4 and len(sampler) == 8  # 23 // 8 = 2 steps of 2 micro-batches
    with pytest.raises(ValueError, match=r"fewer than one optimizer step takes \(2 devices x 8 per device"):
        ResumableSampler(10, 8, num_replicas=2)
    with pytest.raises(ValueError, match="rank=2 must be in"):
        ResumableSampler(10, 1, num_replicas=2, rank=2)


def test_loader_state_resumes_mid_epoch_and_across_the_epoch_end():
    data = torch.arange(24)
    loader = ResumableDataLoader(data, sampler=ResumableSampler(24, 4, seed=1), batch_size=4, drop_last=True)
    epochs = [[b.tolist() for b in loader] for _ in range(2)]
    for consumed in (0, 2, 6):  # fresh, mid-epoch, and a checkpoint after the epoch's last batch
        loader = ResumableDataLoader(data, sampler=ResumableSampler(24, 4, seed=1), batch_size=4, drop_last=True)
        it = iter(loader)
        for _ in range(consumed):
            next(it)
        state = loader.state_dict()
        resumed = ResumableDataLoader(data, sampler=ResumableSampler(24, 4, seed=1), batch_size=4, drop_last=True)
        resumed.load_state_dict(state)
        expected = epochs[0][consumed:] if consumed < 6 else epochs[1]
        assert [b.tolist() for b in resumed] == expected


def test_loader_state_uses_the_consumed_count_not_the_read_ahead():
    data = torch.arange(24)
    consumed = {"n": 1}
    loader = ResumableDataLoader(
        data, sampler=ResumableSampler(24, 4, seed=1), batch_size=4, consumed_batches=lambda: consumed["n"]
    )
    it = iter(loader)
    first, second = next(it), next(it)  # the second was only read ahead
    state = loader.state_dict()
    assert state["consumed_batches"] == 1
    resumed = ResumableDataLoader(data, sampler=ResumableSampler(24, 4, seed=1), batch_size=4)
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(resumed)), second) and not torch.equal(first, second)


# -- random flips keyed by (seed, epoch, index) ------------------------------------------------------
def test_keyed_draws_depend_on_seed_epoch_and_index_only():
    def coins(seed: int, epoch: int) -> list[bool]:
        return [WorkerRandom().coin(key=AugmentationKey(i, seed, epoch)) for i in range(400)]

    first = coins(7, 0)
    assert coins(7, 0) == first and 150 < sum(first) < 250  # a fair coin, the same every time
    assert coins(7, 1) != first and coins(8, 0) != first  # another epoch or seed flips other images
    # A key is its index: equal, hashed, indexing and pickled as the int, with its seed and epoch kept.
    key = AugmentationKey(3, 2**64 - 1, 2)
    assert key == 3 and hash(key) == hash(3) and torch.arange(5)[key] == 3 and key % 2 == 1
    again = pickle.loads(pickle.dumps(key))
    assert type(again) is AugmentationKey and (int(again), again.seed, again.epoch) == (3, 2**64 - 1, 2)
    draw = torch.rand(3, generator=keyed_generator(2**64 - 1, 2, 3))
    assert torch.equal(torch.rand(3, generator=WorkerRandom().generator(key)), draw)
    assert not torch.equal(torch.rand(3, generator=keyed_generator(2**64 - 1, 3, 2)), draw)  # not symmetric


def test_plain_indices_still_draw_from_the_process_generator():
    """``dataset[i]`` outside the training loader flips as before: from this process's seeded generator."""
    torch.manual_seed(11)
    random = WorkerRandom()
    plain = [random.coin(key=i) for i in range(64)]
    generator = torch.Generator().manual_seed(11)
    assert plain == [bool(torch.rand((), generator=generator) < 0.5) for _ in range(64)]
    assert random.generator(5) is random.generator()  # one stateful generator, whatever the int
    assert [WorkerRandom().coin(key=AugmentationKey(i, 11, 0)) for i in range(64)] != plain


@pytest.fixture(scope="module")
def flipping_set(fmnist_root) -> tuple[GrayscaleImageDataset, torch.Tensor]:
    """The tiny Fashion-MNIST with flips on, and its 64 unflipped images."""
    images, labels = load_split(fmnist_root, "train")
    dataset = GrayscaleImageDataset(images, labels, 32, random_flip=True)
    return dataset, torch.stack([GrayscaleImageDataset(images, labels, 32)[i][0] for i in range(64)])


def loader_flips(dataset, plain, sampler: ResumableSampler, num_workers: int = 0, **kwargs) -> list[dict[int, bool]]:
    """``{index: flipped}`` for each of two epochs of a loader over ``dataset`` with ``sampler``."""
    loader = ResumableDataLoader(
        dataset, sampler=sampler, batch_size=sampler.batch_size, drop_last=True, num_workers=num_workers, **kwargs
    )
    epochs = []
    for _ in range(2):
        epoch, start = sampler.epoch, sampler.start_batch
        global_batch = sampler.num_replicas * sampler.batch_size
        order = sampler.order(epoch)
        flips = {}
        for micro, (images, _) in enumerate(loader, start):
            first = micro * global_batch + sampler.rank * sampler.batch_size
            for index, image in zip(order[first : first + sampler.batch_size].tolist(), images, strict=True):
                assert torch.equal(image, plain[index]) or torch.equal(image, plain[index].flip(-1))
                flips[index] = not torch.equal(image, plain[index])
        epochs.append(flips)
    return epochs


def test_flips_are_the_same_with_workers_split_ranks_and_after_a_resume(flipping_set):
    """Each image's flip in an epoch is a function of (seed, epoch, index): workers, batch split and resume
    change nothing, as an image's place in the data order does not change."""
    dataset, plain = flipping_set
    torch.manual_seed(0)
    reference = loader_flips(dataset, plain, ResumableSampler(64, 8, seed=5))
    assert len(reference[0]) == len(reference[1]) == 64
    assert reference[0] != reference[1] and 8 < sum(reference[0].values()) < 56  # another epoch, other flips
    assert reference[0] == {
        i: bool(dataset[AugmentationKey(i, 5, 0)][0].ne(plain[i]).any()) for i in range(64)
    }  # dataset[key] alone decides
    torch.manual_seed(1)  # other worker seeds
    assert loader_flips(dataset, plain, ResumableSampler(64, 8, seed=5), 2, persistent_workers=True) == reference
    ranks = [loader_flips(dataset, plain, ResumableSampler(64, 4, 2, rank, seed=5)) for rank in (0, 1)]
    assert [{**ranks[0][e], **ranks[1][e]} for e in (0, 1)] == reference
    resumed_sampler = ResumableSampler(64, 8, seed=5)
    resumed_sampler.load_state_dict({"epoch": 0, "consumed_batches": 3})  # a checkpoint after 3 batches
    resumed = loader_flips(dataset, plain, resumed_sampler, 2)
    assert len(resumed[0]) == 40 and resumed[0] == {i: reference[0][i] for i in resumed[0]}
    assert resumed[1] == reference[1]
    assert loader_flips(dataset, plain, ResumableSampler(64, 8, seed=6))[0] != reference[0]


# -- whole runs -------------------------------------------------------------------------------------
class SignalAtStep(L.Callback):
    """Send this process ``signame`` when optimizer step ``step`` is about to run."""

    def __init__(self, step: int, signame: str) -> None:
        self.step, self.signum = step, signal.Signals[signame]

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def signal_at(step: int, signame: str) -> list[str]:
    return [
        "+callbacks.signal_at._target_=tests.test_resume.SignalAtStep",
        f"+callbacks.signal_at.step={step}",
        f"+callbacks.signal_at.signame={signame}",
    ]


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_rerun_is_bitwise_an_uninterrupted_run(fmnist_root, tmp_path):
    """Runs as separate processes (~40 s on 2 cores): a real SIGKILL, then the same command again. Two
    persistent loader workers flip the images: their seeds differ in the resumed process."""
    kill_step = random.Random().randrange(3, 12)
    print(f"killing at step {kill_step}")
    settings = (*RESUME_SETTINGS, "data.num_workers=2", "data.persistent_workers=true")
    reference = run_train(tiny_overrides(fmnist_root, tmp_path / "reference", *settings))
    assert reference.returncode == 0, describe(reference)
    command = tiny_overrides(fmnist_root, tmp_path / "killed", *settings)
    kill_then_rerun(command, tmp_path / "killed", kill_step, hooks_dir=tmp_path / "hooks")
    assert_same_training_state(
        load(tmp_path / "reference" / "checkpoints" / "last.ckpt"),
        load(tmp_path / "killed" / "checkpoints" / "last.ckpt"),
    )


@pytest.mark.slow
def test_sigusr1_saves_a_checkpoint_that_resumes_exactly(train_cfg):
    """~6 s, in process: the signal stops the run mid-epoch (after step 6 of 8) with last.ckpt; re-running
    the command finishes bit for bit like an uninterrupted run."""
    reference_cfg = train_cfg(
        *RESUME_SETTINGS, "run_name=reference", "paths.output_dir=${hydra:runtime.output_dir}/ref"
    )
    train(reference_cfg)
    cfg = train_cfg(*RESUME_SETTINGS, *signal_at(5, "SIGUSR1"))
    out = Path(cfg.paths.output_dir)
    assert train(cfg) is None  # preempted: no metric, no metrics.json
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 6  # the step under way finished
    assert not (out / "metrics.json").exists()
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # handler given back
    train(train_cfg(*RESUME_SETTINGS, *signal_at(1000, "SIGUSR1")))  # the same command, as a requeue runs it
    assert_same_training_state(
        load(Path(reference_cfg.paths.output_dir) / "checkpoints" / "last.ckpt"),
        load(out / "checkpoints" / "last.ckpt"),
    )
    assert (out / "metrics.json").is_file()


def test_sigterm_saves_a_checkpoint_and_stops(train_cfg):
    before = signal.getsignal(signal.SIGTERM)
    cfg = train_cfg(*RESUME_SETTINGS, *signal_at(7, "SIGTERM"))  # the checkpoint ends an epoch
    assert train(cfg) is None
    out = Path(cfg.paths.output_dir)
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 8
    assert not (out / "samples" / "final.png").exists()  # the end-of-run outputs wait for the real end
    assert signal.getsignal(signal.SIGTERM) == before
    # The requeued job runs the same command (the test's callback, which a checkpoint may only name
    # when the command names it too, now at a step that never comes).
    train(train_cfg(*RESUME_SETTINGS, *signal_at(1000, "SIGTERM")))
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 12
    assert (out / "samples" / "final.png").is_file()


def test_newest_of_last_and_hpc_checkpoints_is_resumed(train_cfg):
    """Lightning's own SLURM handler writes hpc_ckpt_N.ckpt in the run dir: re-running must find it."""
    from spectral_diffusion.utils.run import find_resume_checkpoint

    cfg = train_cfg()
    out = Path(cfg.paths.output_dir)
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 4}, out / "checkpoints" / "last.ckpt")
    assert find_resume_checkpoint(cfg) == str(out / "checkpoints" / "last.ckpt")
    torch.save({"global_step": 6}, out / "hpc_ckpt_1.ckpt")
    assert find_resume_checkpoint(cfg) == str(out / "hpc_ckpt_1.ckpt")
    torch.save({"global_step": 6}, out / "checkpoints" / "last.ckpt")
    assert find_resume_checkpoint(cfg) == str(out / "checkpoints" / "last.ckpt")  # a tie: last.ckpt
    (out / "checkpoints" / "last.ckpt").write_bytes(b"torn")
    assert find_resume_checkpoint(cfg) == str(out / "hpc_ckpt_1.ckpt")


@pytest.mark.slow
def test_wandb_offline_run_is_continued_by_the_resumed_run(train_cfg, monkeypatch):
    """~25 s: two offline wandb runs under one id (``wandb sync`` merges them into one online run)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = train_cfg("logger=wandb", "callbacks.sample_grid.every_n_steps=0")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    first = load(out / "checkpoints" / "last.ckpt")["logger_ids"]["WandbLogger"]
    train(train_cfg("logger=wandb", "callbacks.sample_grid.every_n_steps=0", "trainer.max_steps=6", "resume=true"))
    assert load(out / "checkpoints" / "last.ckpt")["logger_ids"]["WandbLogger"] == first
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.endswith(f"-{first}") for run in runs)


def test_slurm_requeue_calls_scontrol_with_the_job(tmp_path, monkeypatch):
    from spectral_diffusion.training.preemption import Preemption, parse_signal, slurm_job_id

    calls = tmp_path / "calls"
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.parent.mkdir()
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    Preemption(requeue="auto")._requeue()  # not a SLURM job: nothing to requeue
    assert not calls.exists()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    Preemption(requeue="never")._requeue()
    assert not calls.exists()
    Preemption(requeue="auto")._requeue()
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "77_3"
    Preemption()._requeue()
    assert calls.read_text().splitlines() == ["requeue 4242", "requeue 77_3"]
    assert parse_signal("USR1") == parse_signal("SIGUSR1") == signal.SIGUSR1
    with pytest.raises(ValueError, match="'SIGFOO' is not a signal name"):
        Preemption(signals=["SIGFOO"])
