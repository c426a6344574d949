"""Conditioning: label checks and dropout for guidance, the cross-attention (context) path, text
embeddings as data, and class- and text-conditional training end to end."""

from __future__ import annotations

import importlib.util
import json
import string
from pathlib import Path

import pytest
import torch

from spectral_diffusion.bundles import ModelBundle
from spectral_diffusion.data.text_embeddings import (
    TextEmbeddingDataModule,
    TextEmbeddings,
    TextEmbeddingsError,
    encode_captions,
)
from spectral_diffusion.diffusion.process import GaussianDiffusion
from spectral_diffusion.diffusion.samplers import DDIMSampler
from spectral_diffusion.losses import DenoisingLoss, SpectralDistillationLoss
from spectral_diffusion.networks import UNet
from spectral_diffusion.teachers.base import Teacher
from spectral_diffusion.training.conditioning import (
    check_labels,
    drop_context,
    drop_labels,
    dropout_mask,
    prepare_condition,
)
from spectral_diffusion.training.module import DiffusionModule, step_generator

from .conftest import compose_config
from .test_unet import randomize_zero_inits

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(image_size=16, in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, head_channels=8)


# -- labels and dropout -----------------------------------------------------------------------------
def test_labels_out_of_range_name_the_value_and_num_classes():
    with pytest.raises(ValueError, match=r"class label 10 is outside \[0, 10\) for model.num_classes=10"):
        check_labels(torch.tensor([3, 10, 2]), 10)
    with pytest.raises(ValueError, match=r"class label -1 is outside \[0, 4\)"):
        check_labels(torch.tensor([-1]), 4)
    with pytest.raises(ValueError, match="must be integers"):
        check_labels(torch.tensor([0.0, 1.0]), 4)
    assert check_labels(torch.tensor([0, 9], dtype=torch.uint8), 10).dtype == torch.long


def test_label_dropout_replays_from_the_generator():
    labels = torch.arange(1000) % 7
    dropped = drop_labels(labels, 7, 0.25, torch.Generator().manual_seed(3))
    expected = dropout_mask(1000, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(dropped == 7, expected)
    assert torch.equal(dropped[~expected], labels[~expected])
    assert 200 < int(expected.sum()) < 300  # Binomial(1000, 0.25): mean 250, std 14


def test_zero_dropout_draws_nothing():
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    condition = prepare_condition(torch.tensor([1, 2]), torch.randn(2, 3, 4), None, 10, 0.0, 0.0, generator)
    assert torch.equal(generator.get_state(), state)
    assert condition.context_mask is None and torch.equal(condition.class_labels, torch.tensor([1, 2]))


def test_context_dropout_clears_whole_rows():
    context, mask = torch.randn(400, 5, 3), torch.ones(400, 5, dtype=torch.bool)
    mask[:, 4] = False  # padding stays padding
    dropped = drop_context(context, mask, 0.5, torch.Generator().manual_seed(0))
    rows = dropped.any(dim=1)
    assert torch.equal(dropped[rows], mask[rows])
    assert 150 < int((~rows).sum()) < 250


def test_bad_dropout_probability_is_named():
    net = UNet(**TINY, num_classes=3)
    diffusion = GaussianDiffusion(num_timesteps=100)
    with pytest.raises(ValueError, match=r"module.label_dropout=1.0 must be a probability in \[0, 1\)"):
        DiffusionModule(net, diffusion, DenoisingLoss(diffusion), DDIMSampler(diffusion, steps=2), label_dropout=1.0)


# -- the cross-attention path -----------------------------------------------------------------------
def context_net(**kwargs) -> UNet:
    torch.manual_seed(0)
    return randomize_zero_inits(UNet(**{**TINY, "attention_resolutions": (8,), "context_dim": 12, **kwargs}))


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding (masked and unmasked attention take different kernels)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * float(expected.detach().abs().max()))


def test_without_context_dim_the_network_is_unchanged():
    torch.manual_seed(0)
    plain = UNet(**TINY, attention_resolutions=(8,))
    keys = set(plain.state_dict())
    assert not any("cross" in k or "null_context" in k for k in keys)
    with_context = UNet(**TINY, attention_resolutions=(8,), context_dim=12)
    extra = set(with_context.state_dict()) - keys
    # cross-attention after the one self-attention of each level at size 8, and in the middle
    assert extra == {"null_context"} | {
        f"{prefix}.cross.{p}.{w}"
        for prefix in ("down_levels.1.blocks.0", "up_levels.0.blocks.0", "up_levels.0.blocks.1")
        for p in ("norm", "q", "kv", "proj")
        for w in ("weight", "bias")
    } | {f"mid_cross.{p}.{w}" for p in ("norm", "q", "kv", "proj") for w in ("weight", "bias")}
    assert keys <= set(with_context.state_dict())


def test_zero_initialised_cross_attention_starts_as_the_identity():
    torch.manual_seed(0)
    net = UNet(**TINY, attention_resolutions=(8,), context_dim=12)
    torch.nn.init.normal_(net.conv_out.weight)  # make the output non-zero, keep every cross.proj at zero
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 50])
    torch.testing.assert_close(net(x, t, context=torch.randn(2, 4, 12)), net(x, t))


def test_context_conditions_the_output_and_masked_tokens_are_ignored():
    net = context_net()
    x, t, context = torch.randn(2, 1, 16, 16), torch.tensor([5, 500]), torch.randn(2, 4, 12)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = net(x, t, context=context, context_mask=mask)
    assert not torch.allclose(out, net(x, t, context=torch.randn(2, 4, 12), context_mask=mask))
    changed = context.clone()
    changed[0, 2:] = 100.0  # behind the mask
    assert_same(net(x, t, context=changed, context_mask=mask), out)
    # a masked token is the same as no token at all
    assert_same(net(x[:1], t[:1], context=context[:1, :2]), out[:1])


def test_a_dropped_row_is_the_unconditional_prediction():
    net = context_net()
    x, t, context = torch.randn(3, 1, 16, 16), torch.tensor([5, 200, 900]), torch.randn(3, 6, 12)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1] = False
    out = net(x, t, context=context, context_mask=mask)
    assert_same(out[1:2], net(x[1:2], t[1:2]))  # context=None: null token
    assert_same(out[0:1], net(x[0:1], t[0:1], context=context[0:1]))
    assert not torch.allclose(out[1:2], net(x[1:2], t[1:2], context=context[1:2]))


def test_every_context_parameter_gets_a_gradient():
    net = context_net(num_classes=3)
    mask = torch.tensor([[True] * 4, [False] * 4])  # one conditional row, one dropped (reaches null_context)
    out = net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 3]), torch.randn(2, 4, 12), mask)
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_the_null_context_is_in_every_training_graph():
    # DDP (without find_unused_parameters) needs a gradient for every parameter in every step,
    # also when no sample of the batch had its context dropped.
    net = context_net().train()
    net(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), context=torch.randn(2, 4, 12)).square().mean().backward()
    assert net.null_context.grad is not None and torch.count_nonzero(net.null_context.grad) == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            dict(context=torch.randn(2, 4, 7)),
            r"context must have shape \(batch=2, tokens, context_dim=12\), got \(2, 4, 7\)",
        ),
        (dict(context=torch.randn(2, 12)), r"context must have shape"),
        (dict(context=torch.randn(2, 4, 12), context_mask=torch.ones(2, 5)), r"context_mask must have shape \(2, 4\)"),
        (dict(context_mask=torch.ones(2, 4)), "context_mask was given without context"),
    ],
)
def test_bad_context_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        context_net()(torch.randn(2, 1, 16, 16), torch.tensor([1, 2]), **kwargs)


def test_context_to_a_network_without_context_dim_is_rejected():
    with pytest.raises(ValueError, match="without context_dim"):
        UNet(**TINY)(torch.randn(1, 1, 16, 16), torch.tensor([1]), context=torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="has none: set attention_resolutions or mid_attention"):
        UNet(**TINY, mid_attention=False, context_dim=8)


def test_cross_attention_matches_a_reference_computation():
    from spectral_diffusion.networks.layers import CrossAttention

    torch.manual_seed(0)
    layer = CrossAttention(8, context_dim=5, head_channels=4)
    torch.nn.init.normal_(layer.proj.weight)
    x, context = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, True, False], [True, False, True, True]])
    # the same layer written out: per head, softmax(q k^T / sqrt(d)) v over the kept tokens only
    q = torch.einsum("oc,nchw->nhwo", layer.q.weight[:, :, 0, 0], layer.norm(x)) + layer.q.bias
    k, v = (context @ layer.kv.weight.T + layer.kv.bias).chunk(2, dim=-1)
    out = torch.empty(2, 3, 3, 8)
    for head in range(2):
        s = slice(4 * head, 4 * head + 4)
        scores = torch.einsum("nhwd,nld->nhwl", q[..., s], k[..., s]) / 2.0
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        out[..., s] = torch.einsum("nhwl,nld->nhwd", scores.softmax(-1), v[..., s])
    expected = x + layer.proj(out.permute(0, 3, 1, 2))
    torch.testing.assert_close(layer(x, context, mask), expected)


def test_gmacs_count_the_cross_attention_per_context_token():
    from spectral_diffusion.evaluation.cost import count_gmacs

    net = context_net()
    one_token = count_gmacs(net, (1, 16, 16))  # the null context
    assert one_token > count_gmacs(UNet(**TINY, attention_resolutions=(8,)), (1, 16, 16))
    # Four cross-attentions (three at 8x8 with 32 channels, and the middle one, also 8x8x32); each
    # extra token costs its key/value projection (2 * 12 * 32) and its score and value products
    # with the 64 queries (2 * 64 * 32).
    extra = 4 * 4 * (2 * 12 * 32 + 2 * 64 * 32) / 1e9
    assert count_gmacs(net, (1, 16, 16), context_shape=(5, 12)) - one_token == pytest.approx(extra, rel=1e-9)


# -- class-conditional training ---------------------------------------------------------------------
class LabelRecorder:
    """Records the class labels each call of a network receives (a forward pre-hook)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.calls: list[torch.Tensor | None] = []
        net.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        labels = args[2] if len(args) > 2 else kwargs.get("class_labels")
        self.calls.append(None if labels is None else labels.clone())


#: training_step outside a Trainer: its self.log() calls only warn that there is nowhere to log to.
NO_TRAINER_LOG = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`:UserWarning")


def conditional_module(label_dropout: float, loss=None, net=None) -> DiffusionModule:
    diffusion = GaussianDiffusion(num_timesteps=100)
    net = net if net is not None else UNet(**TINY, num_classes=10)
    return DiffusionModule(
        net,
        diffusion,
        loss or DenoisingLoss(diffusion),
        DDIMSampler(diffusion, steps=2),
        seed=7,
        channels_last=False,
        label_dropout=label_dropout,
    )


@NO_TRAINER_LOG
def test_dropped_labels_reach_the_network_as_the_null_label():
    module = conditional_module(label_dropout=0.3)
    recorder = LabelRecorder(module.net)
    labels = torch.arange(256) % 10
    batch = (torch.randn(256, 1, 16, 16), labels)
    module.train()
    module.training_step(batch, 0)
    (seen,) = recorder.calls
    # the step's generator (seed 7, rank 0, step 0) draws the dropout mask first
    expected = dropout_mask(256, 0.3, step_generator(7, 0, 0))
    assert int((seen == 10).sum()) == int(expected.sum()) > 0
    assert torch.equal(seen == 10, expected) and torch.equal(seen[~expected], labels[~expected])
    module.eval()  # validation measures the conditional loss: nothing dropped
    module.validation_step(batch, 0)
    assert torch.equal(recorder.calls[-1], labels)


@NO_TRAINER_LOG
def test_labels_out_of_range_in_the_data_stop_training():
    module = conditional_module(label_dropout=0.1)
    module.train()
    with pytest.raises(ValueError, match=r"class label 12 is outside \[0, 10\)"):
        module.training_step((torch.randn(2, 1, 16, 16), torch.tensor([1, 12])), 0)


@NO_TRAINER_LOG
def test_the_teacher_sees_the_students_dropped_labels():
    diffusion = GaussianDiffusion(num_timesteps=100)
    torch.manual_seed(0)
    teacher_net = UNet(**TINY, num_classes=10)
    teacher = Teacher(ModelBundle(teacher_net, diffusion, None, (1, 16, 16), num_classes=10))
    student = UNet(**TINY, num_classes=10)
    loss = SpectralDistillationLoss(diffusion, teacher, student, features=False)
    module = conditional_module(label_dropout=0.5, loss=loss, net=student)
    s_rec, t_rec = LabelRecorder(student), LabelRecorder(teacher_net)
    module.train()
    module.training_step((torch.randn(64, 1, 16, 16), torch.arange(64) % 10), 0)
    assert (s_rec.calls[-1] == 10).any()
    assert torch.equal(s_rec.calls[-1], t_rec.calls[-1])


def test_a_class_conditional_model_learns_from_its_labels():
    # Two classes told apart only by their label: the conditional loss must fall below what the
    # best label-blind prediction (the mean of the two images) can reach.
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(num_timesteps=1000, prediction_type="x0")
    net = UNet(
        image_size=8,
        in_channels=1,
        base_channels=16,
        channel_mult=(1,),
        num_res_blocks=1,
        num_classes=2,
        mid_attention=False,
    )
    module = DiffusionModule(
        net, diffusion, DenoisingLoss(diffusion), DDIMSampler(diffusion, steps=2), channels_last=False
    )
    images = torch.stack([torch.full((1, 8, 8), -1.0), torch.full((1, 8, 8), 1.0)]).repeat(16, 1, 1, 1)
    labels = torch.tensor([0, 1]).repeat(16)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(60):
        loss = module._compute_loss((images, labels), step_generator(0, 0, step))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        t = torch.full((32,), 999)  # alpha_bar 4e-5: x_t is noise, only the label says which image it was
        x_t = diffusion.add_noise(images, torch.randn_like(images), t)
        conditional = (net(x_t, t, labels) - images).square().mean()
        swapped = (net(x_t, t, 1 - labels) - images).square().mean()
    assert conditional < 0.1  # label-blind: error 1.0 (the mean image 0 against +-1)
    assert swapped > 2.0  # the other label gives the other image (error 4)


# -- text embeddings as data ------------------------------------------------------------------------
def write_class_embeddings(path: Path, num_classes: int = 10, dim: int = 32, tokens: int = 5, seed: int = 0) -> Path:
    """A text-embedding file of random "captions" by label: what test configs use instead of CLIP's."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(num_classes, tokens, dtype=torch.bool)
    mask[1::2, tokens - 1] = False  # padding at the end of every other caption
    table = TextEmbeddings(
        torch.randn(num_classes, tokens, dim, generator=generator),
        mask,
        [f"caption {k}" for k in range(num_classes)],
        encoder="random",
    )
    return table.save(path)


def test_text_embeddings_round_trip(tmp_path):
    path = write_class_embeddings(tmp_path / "emb.pt")
    table = TextEmbeddings.load(path)
    assert table.embeddings.dtype == torch.float16 and table.context_dim == 32 and table.by == "label"
    assert table.captions[3] == "caption 3" and table.mask.dtype == torch.bool
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(TextEmbeddingsError, match="is not a text-embedding file"):
        TextEmbeddings.load(tmp_path / "other.pt")
    with pytest.raises(TextEmbeddingsError, match="(?s)do not exist.*encode_text.py"):
        TextEmbeddings.load(tmp_path / "missing.pt")


def test_text_datamodule_pairs_each_image_with_its_labels_caption(tmp_path, fmnist_root):
    table = TextEmbeddings.load(write_class_embeddings(tmp_path / "emb.pt"))
    dm = TextEmbeddingDataModule(str(tmp_path / "emb.pt"), root=str(fmnist_root), download=False, batch_size=8)
    assert dm.image_shape == (1, 32, 32) and dm.num_classes == 10 and dm.context_dim == 32
    dm.setup("fit")
    images, labels, context, mask = next(iter(dm.val_dataloader()))
    assert images.shape == (8, 1, 32, 32) and context.shape == (8, 5, 32) and mask.shape == (8, 5)
    torch.testing.assert_close(context, table.embeddings[labels].float())
    assert torch.equal(mask, table.mask[labels])


def test_captions_that_do_not_fit_the_images_are_named(tmp_path, fmnist_root):
    write_class_embeddings(tmp_path / "few.pt", num_classes=3)
    dm = TextEmbeddingDataModule(str(tmp_path / "few.pt"), root=str(fmnist_root), download=False, batch_size=8)
    with pytest.raises(TextEmbeddingsError, match=r"has label \d+ but there are captions for labels 0..2 only"):
        dm.setup("fit")
    by_image = TextEmbeddings(
        torch.randn(2, 3, 4),
        torch.ones(2, 3, dtype=torch.bool),
        ["a", "b"],
        by="image",
        index={"train": torch.zeros(5, dtype=torch.long), "val": torch.zeros(32, dtype=torch.long)},
    )
    by_image.save(tmp_path / "by_image.pt")
    dm = TextEmbeddingDataModule(str(tmp_path / "by_image.pt"), root=str(fmnist_root), download=False, batch_size=8)
    with pytest.raises(TextEmbeddingsError, match="index\\['train'\\] has 5 entries but the train split has 64 images"):
        dm.setup("fit")


def test_text_conditional_experiment_trains(train_cfg, tmp_path):
    from train import train

    path = write_class_embeddings(tmp_path / "emb.pt", dim=24)
    cfg = train_cfg("experiment=fmnist_text", f"data.embeddings={path}", "model.context_dim=24", "trainer.max_steps=2")
    assert cfg.module.context_dropout == 0.1
    train(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert checkpoint["state_dict"]["net.null_context"].shape == (24,)


def test_class_conditional_experiment_trains(train_cfg):
    from train import train

    cfg = train_cfg("experiment=fmnist_cond", "trainer.max_steps=2")
    assert cfg.model.num_classes == 10 and cfg.module.label_dropout == 0.1
    train(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["state_dict"]["net.class_embed.weight"].shape[0] == 11  # 10 classes + the null label


# -- encoding captions with a (tiny, random, offline) CLIP text encoder ------------------------------
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A CLIP tokenizer (characters only) and a random 2-layer CLIPTextModel, saved like a hub model."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("clip")
    chars = list(string.ascii_lowercase + string.digits + "-/'")
    vocab = {
        token: i for i, token in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])
    }
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=40
    ).save_pretrained(folder)
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    transformers.CLIPTextModel(config).save_pretrained(folder)
    return folder


def test_encode_captions_gives_the_encoders_hidden_states(tiny_clip):
    import transformers

    captions = ["a photo of a bag", "a photo of a t-shirt/top", "a photo of a sandal"]
    embeddings, mask = encode_captions(captions, str(tiny_clip), batch_size=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_clip)
    model = transformers.CLIPTextModel.from_pretrained(tiny_clip).eval()
    tokens = tokenizer(captions, padding="longest", return_tensors="pt")
    with torch.no_grad():
        reference = model(**tokens).last_hidden_state
    assert embeddings.shape == (3, tokens["input_ids"].shape[1], 16)
    assert torch.equal(mask, tokens["attention_mask"].bool()) and not mask.all()
    torch.testing.assert_close(embeddings, reference)


def test_encode_text_script_writes_a_table_for_the_class_names(tiny_clip, tmp_path, fmnist_root):
    spec = importlib.util.spec_from_file_location("encode_text_script", ROOT / "scripts" / "encode_text.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "fmnist_text.pt"
    overrides = ["classes=fashion_mnist", f"encoder={tiny_clip}", f"output={out}", "device=cpu"]
    table = script.encode_text(compose_config("encode_text", tmp_path, overrides))
    assert table.captions[7] == "a photo of a sneaker" and table.context_dim == 16
    loaded = TextEmbeddings.load(out)
    assert loaded.encoder == str(tiny_clip) and loaded.embeddings.shape[0] == 10
    # the table feeds a context network directly
    net = UNet(**{**TINY, "context_dim": loaded.context_dim})
    rows = torch.tensor([7, 0])
    assert net(
        torch.randn(2, 1, 16, 16),
        torch.tensor([1, 2]),
        context=loaded.embeddings[rows].float(),
        context_mask=loaded.mask[rows],
    ).shape == (2, 1, 16, 16)
    with pytest.raises(script.ConfigError, match="template='no slot' must contain {} where the class name goes"):
        script.encode_text(compose_config("encode_text", tmp_path, [*overrides, "template='no slot'"]))
    with pytest.raises(script.ConfigError, match="give exactly one caption source.*classes and captions are both set"):
        script.encode_text(compose_config("encode_text", tmp_path, [*overrides, "captions=captions.txt"]))
    with pytest.raises(script.ConfigError, match="train_captions needs val_captions=FILE"):
        script.encode_text(compose_config("encode_text", tmp_path, ["train_captions=t.txt", f"output={out}"]))


def test_text_embeddings_of_another_width_than_the_model_are_named(tmp_path, fmnist_root):
    from spectral_diffusion.assembly import ConfigError, check_data_fits_model

    dm = TextEmbeddingDataModule(str(write_class_embeddings(tmp_path / "emb.pt", dim=24)), root=str(fmnist_root))
    net = UNet(**{**TINY, "image_size": 32, "context_dim": 16})
    with pytest.raises(
        ConfigError, match="text embeddings are 24 wide but model.context_dim=16; set model.context_dim=24"
    ):
        check_data_fits_model(dm, net)
    with pytest.raises(ConfigError, match="model.context_dim=None"):
        check_data_fits_model(dm, UNet(**{**TINY, "image_size": 32}))
