"""The one checkpoint record (`read_weights` -> `Weights.build`) for our checkpoints and torchvision files."""

import pytest
import torch
import torchvision

from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import read_weights
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_a_torchvision_file_builds_torchvisions_network(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None, num_classes=7).eval()
    for m in tv.modules():  # non-trivial BN statistics, so a layout mismatch would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet50-7cls.pth"
    torch.save(tv.state_dict(), path)
    w = read_weights(path)
    assert w.model is None and w.options["num_classes"] == 7 and w.layout == {"stride_in_1x1": False, "shortcut": "B"}
    ours = w.build("resnet50").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_diff(ours(x), tv(x)) < 1e-5
    # Wrapped as {"state_dict": ...}, from a grayscale copy of the stem.
    state = tv.state_dict()
    state["conv1.weight"] = state["conv1.weight"].sum(1, keepdim=True)
    torch.save({"state_dict": state}, path)
    gray = read_weights(path).build("resnet50")
    assert gray.conv1.in_channels == 1 and gray(torch.randn(1, 1, 64, 64)).shape == (1, 7)
    with pytest.raises(UserError, match="cannot rebuild 'resnet18'"):
        read_weights(path).build("resnet18")
    with pytest.raises(UserError, match="does not name its network"):
        read_weights(path).build()


def test_our_checkpoint_rebuilds_itself(tmp_path):
    net = create_model("cifar_resnet20", num_classes=4, in_channels=1)
    options = {"num_classes": 4, "in_channels": 1}
    meta = {"model": "cifar_resnet20", "model_options": options, "mean": torch.zeros(1, 8, 8), "std": None}
    meta |= {"classes": list("abcd"), "dataset": "fake"}
    save_atomic({"model": net.state_dict(), "config": {"train": {"seed": 3}}, "meta": meta}, tmp_path / "c.pt")
    w = read_weights(tmp_path / "c.pt", what="checkpoint")
    assert (w.model, w.classes, w.config, w.num_classes) == ("cifar_resnet20", list("abcd"), {"train": {"seed": 3}}, 4)
    rebuilt = w.build()
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), net.state_dict().values()))


def test_not_weights_is_one_line(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="^import-weights: .* is neither a resnetlab checkpoint nor a torchvision"):
        read_weights(path, what="import-weights")
