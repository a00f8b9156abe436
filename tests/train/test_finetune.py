"""Fine-tuning (`train.init_from`, `train.freeze`, `optim.backbone_lr_mult`) through the training loop
on the fake source, and loading torchvision weights from a file (no network).

Expected values come from the source weights themselves (what must not change) and from torchvision's
own ResNet (what the loaded network must compute)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import TORCHVISION_MEAN, read_weights
from resnetlab.models import create_model
from resnetlab.train import run_training
from resnetlab.train.finetune import freeze, init_model, read_source
from resnetlab.utils.checkpoint import load, save_atomic

SOURCE_CLASSES = 7  # the fake source has 4: the head must be replaced


def source_checkpoint(path, seed=1):
    """One of our checkpoints: a ResNet-8 for 1x8x8 images and 7 classes, random but fixed weights and
    non-trivial BN statistics (so "unchanged" cannot pass by accident)."""
    torch.manual_seed(seed)
    model = create_model("cifar_resnet", depth=8, num_classes=SOURCE_CLASSES, in_channels=1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    meta = {
        "dataset": "other",
        "classes": [f"c{k}" for k in range(SOURCE_CLASSES)],
        "num_classes": SOURCE_CLASSES,
        "in_channels": 1,
        "image_size": 8,
        "mean": torch.full((1, 8, 8), 0.25),
        "std": None,
        "model": "cifar_resnet",
        "model_options": {"num_classes": SOURCE_CLASSES, "in_channels": 1, "depth": 8},
    }
    save_atomic({"model": model.state_dict(), "config": {}, "meta": meta}, path)
    return model.state_dict()


def test_finetune_from_our_checkpoint_freezes_stem_and_layer1(tmp_path, fake_data, tiny_cfg, capsys):
    src = source_checkpoint(tmp_path / "src.pt")
    cfg = tiny_cfg(
        f"train.init_from={tmp_path / 'src.pt'}",
        "train.freeze=[stem,layer1]",
        "train.max_iters=12",
        "train.eval_every=12",
        "optim.lr=0.05",
    )
    run_training(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert "head replaced: fc 7 -> 4 classes" in out and "frozen: stem, layer1" in out
    final = load(tmp_path / "run" / "final.pt")
    got = final["model"]
    assert got["fc.weight"].shape == (4, 64)
    frozen = [k for k in src if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert any("running_mean" in k for k in frozen) and any("weight" in k for k in frozen)
    for k in frozen:  # weights, BN affine and BN statistics of the frozen parts: exactly the source's
        assert torch.equal(got[k], src[k]), k
    # The rest was trained: weights and BN statistics moved away from the source.
    assert not torch.equal(got["layer2.0.conv1.weight"], src["layer2.0.conv1.weight"])
    assert not torch.equal(got["layer3.0.bn1.running_mean"], src["layer3.0.bn1.running_mean"])
    # Normalisation follows the source weights.
    assert torch.equal(final["meta"]["mean"], torch.full((1, 8, 8), 0.25))


def test_resume_needs_no_source_and_keeps_its_normalisation(tmp_path, fake_data, tiny_cfg, capsys):
    source_checkpoint(tmp_path / "src.pt")
    settings = [f"train.init_from={tmp_path / 'src.pt'}", "train.freeze=[stem]", "train.eval_every=4"]
    run_training(tiny_cfg(*settings, "train.max_iters=4", "train.checkpoint_every=4"), tmp_path / "run")
    (tmp_path / "src.pt").unlink()  # the source is gone: the run's own checkpoint has all it needs
    run_training(tiny_cfg(*settings, "train.max_iters=8", "train.checkpoint_every=4"), tmp_path / "run", resume=True)
    final = load(tmp_path / "run" / "final.pt")
    assert final["iteration"] == 8 and torch.equal(final["meta"]["mean"], torch.full((1, 8, 8), 0.25))
    out = capsys.readouterr().out
    assert out.count("init from") == 1 and out.count("frozen: stem") == 2  # loaded once, frozen in both


def test_backbone_lr_mult_zero_trains_the_head_only(tmp_path, fake_data, tiny_cfg):
    src = source_checkpoint(tmp_path / "src.pt")
    cfg = tiny_cfg(
        f"train.init_from={tmp_path / 'src.pt'}", "optim.backbone_lr_mult=0", "train.max_iters=6", "train.eval_every=6"
    )
    run_training(cfg, tmp_path / "run")
    got = load(tmp_path / "run" / "final.pt")["model"]
    params = dict(create_model("cifar_resnet", depth=8, num_classes=4, in_channels=1).named_parameters())
    for k in params:
        if not k.startswith("fc."):
            assert torch.equal(got[k], src[k]), k  # lr x 0 (and so no weight decay step either)
    assert got["fc.weight"].abs().sum() > 0 and got["fc.weight"].shape[0] == 4


def test_same_classes_keep_the_head(tmp_path):
    source_checkpoint(tmp_path / "src.pt")
    model = create_model("cifar_resnet", depth=8, num_classes=SOURCE_CLASSES, in_channels=1)
    lines = init_model(model, read_weights(str(tmp_path / "src.pt")), classes=[f"c{k}" for k in range(7)])
    assert not any("head replaced" in line for line in lines)
    assert torch.equal(model.fc.weight, load(tmp_path / "src.pt")["model"]["fc.weight"])


def test_frozen_bn_stays_in_eval_mode():
    model = create_model("cifar_resnet", depth=8, num_classes=4, in_channels=1)
    freeze(model, ["stem"])
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(4, 1, 8, 8) + 3.0)
    assert not model.bn1.training and torch.equal(model.bn1.running_mean, before)
    assert model.layer1[0].bn1.training
    with pytest.raises(UserError, match="layer4"):
        freeze(model, ["layer4"])  # a CIFAR ResNet has three stages


def torchvision_pth(path, in_channels=3, num_classes=10):
    """A torchvision resnet18 state dict written to a file, as users download them (random weights)."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=num_classes)
    if in_channels != 3:
        tv.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(tv.state_dict(), path)
    return tv.eval()


def test_torchvision_state_dict_from_a_file(tmp_path):
    tv = torchvision_pth(tmp_path / "resnet18.pth")
    source = read_weights(str(tmp_path / "resnet18.pth"))
    assert torch.allclose(source.mean.flatten(), torch.tensor(TORCHVISION_MEAN))  # torchvision's normalisation
    ours = create_model("resnet18", num_classes=5, stride_in_1x1=False, shortcut="B").eval()
    lines = init_model(ours, source, classes=[str(k) for k in range(5)])
    assert "head replaced: fc 10 -> 5 classes, newly initialised" in lines
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # the same features as torchvision's network computes
        want = torch.flatten(torch.nn.Sequential(*list(tv.children())[:-1])(x), 1)
        got = torch.flatten(ours.avgpool(ours.forward_features(x)), 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def model_cfg(tiny_cfg, tmp_path, *settings: str):
    from resnetlab.config import apply_overrides

    return apply_overrides(tiny_cfg(), [f"train.init_from={tmp_path / 'r18.pth'}", *settings])


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        # ResNet-50: a bottleneck's 1x1 conv1 weight (64, 64, 1, 1) against resnet18's 3x3 (64, 64, 3, 3)
        (
            ["model.name=resnet50"],
            r"layer1.0.conv1.weight has shape \(64, 64, 3, 3\).*did you mean model.name=resnet18\?",
        ),
        # ResNet-34: every resnet18 tensor fits, layer1.2 ... are missing: no silent partial load
        (["model.name=resnet34"], r"missing.*did you mean model.name=resnet18\?$"),
        # option A has no projection (downsample) tensors: the weights are option B's
        (["model.name=resnet18", "model.shortcut=A"], r"unexpected.*did you mean model.shortcut=B\?$"),
    ],
)
def test_weights_of_another_network_name_the_one_they_fit(tmp_path, tiny_cfg, settings, error):
    """torchvision's resnet18 (the expected name: the network that made the weights) onto other networks."""
    torchvision_pth(tmp_path / "r18.pth")
    cfg = model_cfg(tiny_cfg, tmp_path, *settings)
    ours = create_model(
        cfg.model.name, num_classes=5, **({"shortcut": cfg.model.shortcut} if cfg.model.shortcut else {})
    )
    with pytest.raises(UserError, match=error):
        init_model(ours, read_weights(str(tmp_path / "r18.pth")), classes=list("abcde"), cfg=cfg)


def test_basic_block_nets_take_weights_of_either_stride_layout(tmp_path, tiny_cfg):
    """stride_in_1x1 places a bottleneck's stride; ResNet-18/34 have no 1x1 conv, so torchvision's
    "v1.5" resnet18 fits a config with the paper's stride_in_1x1=true, as it fits false."""
    torchvision_pth(tmp_path / "r18.pth")
    for stride_in_1x1 in ("true", "false"):
        cfg = model_cfg(tiny_cfg, tmp_path, "model.name=resnet18", f"model.stride_in_1x1={stride_in_1x1}")
        assert read_source(cfg) is not None


def test_source_layout_must_match_the_config(tmp_path, tiny_cfg):
    torchvision_pth(tmp_path / "r18.pth")
    cfg = model_cfg(tiny_cfg, tmp_path, "model.name=resnet50")
    with pytest.raises(UserError, match="model.stride_in_1x1=false"):
        read_source(cfg)  # torchvision's v1.5 weights in the paper's layout would load but compute otherwise
    source_checkpoint(tmp_path / "src.pt")
    cfg = model_cfg(tiny_cfg, tmp_path, f"train.init_from={tmp_path / 'src.pt'}", "model.name=cifar_resnet20")
    with pytest.raises(UserError, match="holds cifar_resnet weights, but model.name is cifar_resnet20"):
        read_source(cfg)


# ---- grey weights on RGB data and the reverse (train.init_channels) ----------------------------------


def test_rgb_weights_on_grey_data_are_refused_naming_the_option(tmp_path, tiny_cfg):
    torchvision_pth(tmp_path / "r18.pth")
    ours = create_model("resnet18", num_classes=5, in_channels=1, shortcut="B")
    cfg = model_cfg(tiny_cfg, tmp_path, "model.name=resnet18")
    with pytest.raises(UserError, match="3-channel images, the data has 1; --set train.init_channels=adapt"):
        init_model(ours, read_weights(str(tmp_path / "r18.pth")), classes=list("abcde"), cfg=cfg)


@pytest.mark.parametrize(("source_channels", "data_channels"), [(3, 1), (1, 3)])
def test_adapted_conv1_answers_a_grey_image_as_the_source(tmp_path, tiny_cfg, source_channels, data_channels):
    """train.init_channels=adapt: the adapted network on a grey image computes what the source network
    computes on that image in its own channel count (grey replicated to RGB, or RGB's one grey plane),
    checked against torchvision's network and torch's conv on the replicated image."""
    tv = torchvision_pth(tmp_path / "r18.pth", in_channels=source_channels)
    cfg = model_cfg(tiny_cfg, tmp_path, "model.name=resnet18", "train.init_channels=adapt")
    ours = create_model("resnet18", num_classes=10, in_channels=data_channels, shortcut="B").eval()
    lines = init_model(ours, read_weights(str(tmp_path / "r18.pth")), classes=[str(k) for k in range(10)], cfg=cfg)
    assert any(line.startswith("conv1 adapted") for line in lines)
    grey = torch.randn(2, 1, 40, 40)
    ours_in, theirs_in = grey.expand(-1, data_channels, -1, -1), grey.expand(-1, source_channels, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.conv1(ours_in), torch.nn.functional.conv2d(theirs_in, tv.conv1.weight, stride=2, padding=3)
        )
        torch.testing.assert_close(ours(ours_in), tv(theirs_in), rtol=1e-4, atol=1e-5)


def test_adapted_normalisation(tmp_path):
    """The weights' mean and std for the data's channels: RGB ones averaged for grey images, a grey one
    repeated for RGB; without adapt, one line naming the option."""
    from resnetlab.data.ondevice import fit_stats

    mean, std = torch.tensor(TORCHVISION_MEAN).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    grey_mean, grey_std = fit_stats(mean, std, channels=1, size=28, adapt=True)
    torch.testing.assert_close(grey_mean.flatten(), torch.tensor([(0.485 + 0.456 + 0.406) / 3]))
    torch.testing.assert_close(grey_std.flatten(), torch.tensor([(0.229 + 0.224 + 0.225) / 3]))
    rgb_mean, rgb_std = fit_stats(torch.full((1, 8, 8), 0.25), None, channels=3, size=8, adapt=True)
    assert rgb_mean.shape == (3, 8, 8) and torch.equal(rgb_mean, torch.full((3, 8, 8), 0.25)) and rgb_std is None
    with pytest.raises(UserError, match="3-channel images, the data has 1; --set train.init_channels=adapt"):
        fit_stats(mean, std, channels=1, size=28)


@pytest.mark.parametrize(
    "bad", ["missing.pt", "torchvision:NoSuch_Weights.X", "torchvision:VGG16_Weights.IMAGENET1K_V1"]
)
def test_bad_sources_are_one_line(bad):
    with pytest.raises(UserError, match="train.init_from"):
        read_weights(bad)


def test_preset_with_cached_torchvision_weights_on_an_imagefolder(tmp_path, capsys):
    """configs/finetune-imagefolder.yaml on a tiny JPEG tree, the weights name resolved through
    torchvision's cache (a file already there: no network), the real ImageFolder data path."""
    import sys
    from pathlib import Path

    from torchvision.models import ResNet18_Weights

    from resnetlab.config import load_config

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_imagenet import write_tree

    weights = ResNet18_Weights.IMAGENET1K_V1
    hub, previous = tmp_path / "hub", torch.hub.get_dir()
    (hub / "checkpoints").mkdir(parents=True)
    tv = torchvision_pth(hub / "checkpoints" / weights.url.rsplit("/", 1)[1], num_classes=1000)
    torch.hub.set_dir(str(hub))
    try:
        cfg = load_config(
            "finetune-imagefolder",
            [
                "model.name=resnet18",
                "train.init_from=torchvision:ResNet18_Weights.IMAGENET1K_V1",
                f"data.dir={write_tree(tmp_path / 'tree')}",
                *("data.crop=32", "data.scale_min=36", "data.scale_max=48", "data.workers=0"),
                *("train.batch_size=4", "train.eval_batch_size=6", "train.max_iters=2", "train.eval_every=2"),
                "train.device=cpu",
            ],
        )
        run_training(cfg, tmp_path / "run")
    finally:
        torch.hub.set_dir(previous)
    assert "head replaced: fc 1000 -> 3 classes" in capsys.readouterr().out
    final = load(tmp_path / "run" / "final.pt")
    mean, std = final["meta"]["mean"], final["meta"]["std"]  # the weights' normalisation, not the tree's
    torch.testing.assert_close(mean.flatten(), torch.tensor(weights.transforms().mean))
    torch.testing.assert_close(std.flatten(), torch.tensor(weights.transforms().std))
    assert torch.equal(final["model"]["conv1.weight"], tv.conv1.weight)  # the preset freezes the stem
    assert torch.equal(final["model"]["bn1.running_var"], tv.bn1.running_var)
    assert final["model"]["fc.weight"].shape == (3, 512)


def test_data_workers_default_follows_the_cores(monkeypatch):
    """data.workers=null (the default): one worker per core the process may run on, at most 8; a
    number, 0 included (load in the training process), is kept."""
    import os

    from resnetlab.config import DataConfig
    from resnetlab.utils.device import resolve_workers

    assert DataConfig().workers is None
    for cores, expected in ((1, 1), (2, 2), (8, 8), (64, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert resolve_workers(None) == expected
    assert resolve_workers(0) == 0 and resolve_workers(12) == 12
