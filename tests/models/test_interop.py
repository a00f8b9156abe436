"""v1.5 mode (stride on the 3x3, shortcut B) is torchvision's ResNet: same names, same outputs."""

import pytest
import torch
import torchvision

from resnetlab.models import create_model


def randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, so that a mismatch would show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_v15_loads_torchvision_strictly(depth):
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    randomize_bn(tv, depth)
    # Built on the meta device and given torchvision's tensors (assign=True): a strict load still
    # checks every name and shape, and 60M parameters are not initialised twice.
    with torch.device("meta"):
        ours = create_model(f"resnet{depth}", stride_in_1x1=False).eval()
        paper = create_model(f"resnet{depth}").eval()
    ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_diff(ours(x), tv(x)) < 1e-5
        if depth >= 50:  # the paper's layout has the same names but computes something else
            paper.load_state_dict(tv.state_dict(), strict=True, assign=True)
            assert rel_diff(paper(x), tv(x)) > 1e-3
