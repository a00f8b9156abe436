import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine's cores are shared: intra-op threads fighting other processes make small
    forwards 10x slower, so these tests run single-threaded (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def net1202():
    """The 1202-layer CIFAR ResNet and its plain twin, built once (seconds of module construction)."""
    from resnetlab.models import cifar_resnet

    return cifar_resnet(1202), cifar_resnet(1202, residual=False)
