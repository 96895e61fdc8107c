"""The device helpers, and that the per-step host-to-device copies do not synchronise CUDA."""

import numpy as np
import pytest
import torch

from wab.parts.augment import Augment, Augmenter, Normalizer
from wab.parts.device import resolve_device, to_device

CUDA = torch.cuda.is_available()


def test_to_device_keeps_values_and_dtype_from_numpy_and_torch():
    a = np.random.default_rng(0).integers(0, 9, size=(2, 5))
    for x in (a, torch.from_numpy(a), a < 4):
        t = to_device(x, torch.device("cpu"))
        assert t.device.type == "cpu"
        assert np.array_equal(t.numpy(), np.asarray(x))


@pytest.mark.skipif(CUDA, reason="checks the error raised when CUDA is absent")
def test_cuda_device_without_cuda_is_named():
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_augmenting_a_batch_on_cuda_needs_no_sync_and_matches_cpu():
    aug = Augment(crop_padding=4, flip=True, cutout=8, random_erasing=0.5, mixup_alpha=0.2, cutmix_alpha=1.0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    cuda = torch.device("cuda")
    gpu = Augmenter(aug, Normalizer((0.5,) * 3, (0.25,) * 3, cuda))
    cpu = Augmenter(aug, Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu")))
    xg, yg, perm = x.to(cuda), y.to(cuda), to_device(np.arange(64)[::-1].copy(), cuda)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        bg = gpu(xg[perm], yg[perm], np.random.default_rng(3))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    bc = cpu(x.flip(0), y.flip(0), np.random.default_rng(3))
    torch.testing.assert_close(bg.x.cpu(), bc.x)
    assert torch.equal(bg.y_b.cpu(), bc.y_b) and bg.lam == bc.lam


def test_a_cpu_record_names_the_processor_and_the_instructions_torch_uses():
    """Two CPU models round differently (results/reference does not reproduce bit for bit on
    another processor): the record says which one ran."""
    from wab.parts.device import cpu_model, device_name

    name = device_name("cpu")
    assert name == f"cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()})" and cpu_model()
