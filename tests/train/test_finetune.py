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


def test_shape_mismatch_outside_the_head_is_refused(tmp_path):
    torchvision_pth(tmp_path / "rgb.pth")
    ours = create_model("resnet18", num_classes=5, in_channels=1, stride_in_1x1=False, shortcut="B")
    with pytest.raises(UserError, match=r"conv1.weight has shape \(64, 3, 7, 7\).*\(64, 1, 7, 7\)"):
        init_model(ours, read_weights(str(tmp_path / "rgb.pth")), classes=list("abcde"))


def test_source_layout_must_match_the_config(tmp_path, tiny_cfg):
    from resnetlab.config import apply_overrides

    torchvision_pth(tmp_path / "r18.pth")
    cfg = apply_overrides(tiny_cfg(), [f"train.init_from={tmp_path / 'r18.pth'}", "model.name=resnet18"])
    with pytest.raises(UserError, match="model.stride_in_1x1=false"):
        read_source(cfg)  # torchvision's v1.5 weights in the paper's layout would load but compute otherwise
    source_checkpoint(tmp_path / "src.pt")
    cfg = apply_overrides(tiny_cfg(), [f"train.init_from={tmp_path / 'src.pt'}", "model.name=cifar_resnet20"])
    with pytest.raises(UserError, match="holds cifar_resnet weights, but model.name is cifar_resnet20"):
        read_source(cfg)


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
