import numpy as np
import pytest
import torch

from wab.parts.augment import Augment, Augmenter, Normalizer, crop_flip
from wab.parts.data import DatasetNotFound, load_data

from .conftest import data_root, requires_data


def test_digits_is_embedded_with_a_fixed_heldout_split():
    d = load_data("digits")
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (1, 8, 8)
    assert len(d.train) + len(d.heldout) == 1437 and len(d.test) == 360
    assert len(d.heldout) == round(0.02 * 1437)
    again = load_data("digits")
    assert torch.equal(again.heldout.x, d.heldout.x) and torch.equal(again.train.y, d.train.y)
    other = load_data("digits", heldout_seed=1)
    assert not torch.equal(other.heldout.x, d.heldout.x)
    assert d.num_classes == 10 and len(d.mean) == 1


def test_a_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WAB_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DatasetNotFound, match=r"cifar-10-batches-bin.*nothing.*WAB_DATA.*data.download=true"):
        load_data("cifar10", root=str(tmp_path / "empty"))


@requires_data
@pytest.mark.parametrize("name, first_test_labels", [("mnist", [7, 2, 1, 0]), ("fashion_mnist", [9, 2, 1, 1])])
def test_mnist_like_from_the_offline_files(name, first_test_labels):
    d = load_data(name, root=str(data_root()))
    assert len(d.train) + len(d.heldout) == 60000 and len(d.heldout) == 1200
    assert d.train.x.shape[1:] == (1, 28, 28) and len(d.test) == 10000
    assert d.test.y[:4].tolist() == first_test_labels
    assert torch.bincount(d.test.y, minlength=10).min() > 800


@pytest.mark.slow
@requires_data
def test_cifar10_from_the_offline_binary_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WAB_CACHE", str(tmp_path))
    d = load_data("cifar10", root=str(data_root()), heldout_fraction=0.0)
    assert d.train.x.shape == (50000, 3, 32, 32) and len(d.test) == 10000
    assert torch.bincount(d.train.y).tolist() == [5000] * 10
    np.testing.assert_allclose(d.mean, (0.4914, 0.4822, 0.4465), atol=1e-3)
    np.testing.assert_allclose(d.std, (0.2470, 0.2435, 0.2616), atol=1e-3)
    assert (tmp_path / "cifar10_bin.npz").exists()  # decoded once, then cached


def test_two_runs_decoding_cifar10_at_once_both_get_the_cache(tmp_path, monkeypatch):
    """Two runs of a sweep decode CIFAR-10 at the same time: each writes its own temporary file (a shared
    one made the second run's rename fail), and a cache cut short is decoded again."""
    import hashlib

    import wab.parts.data as data

    rng = np.random.default_rng(0)
    md5 = {}
    for name in data.CIFAR10_BIN_MD5:
        raw = rng.integers(0, 10, size=(3, 3073), dtype=np.uint8).tobytes()
        (tmp_path / name).write_bytes(raw)
        md5[name] = hashlib.md5(raw).hexdigest()
    monkeypatch.setattr(data, "CIFAR10_BIN_MD5", md5)
    monkeypatch.setenv("WAB_CACHE", str(tmp_path / "cache"))
    savez, inner = np.savez, []

    def another_run_decodes_meanwhile(fh, **arrays):
        savez(fh, **arrays)
        if not inner:
            inner.append(None)
            inner[0] = data._read_cifar10_bin(tmp_path)  # interleaves with the outer write

    monkeypatch.setattr(np, "savez", another_run_decodes_meanwhile)
    outer = data._read_cifar10_bin(tmp_path)
    assert [a.shape for a in outer] == [(15, 3, 32, 32), (15,), (3, 3, 32, 32), (3,)]
    assert all(np.array_equal(a, b) for a, b in zip(outer, inner[0]))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cifar10_bin.npz"]
    (tmp_path / "cache" / "cifar10_bin.npz").write_bytes(b"cut short")
    again = data._read_cifar10_bin(tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(outer, again))


def test_random_crop_shifts_the_image_within_its_padding():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    rng = np.random.default_rng(0)
    out = crop_flip(x, 2, False, rng)
    off = np.random.default_rng(0).integers(0, 5, size=(2, 2))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        oy, ox = off[0, b], off[1, b]
        assert torch.equal(out[b], padded[b, :, oy : oy + 6, ox : ox + 6])


def test_flip_and_mixup():
    x = torch.arange(4 * 3 * 4 * 4, dtype=torch.uint8).view(4, 3, 4, 4)
    flipped = crop_flip(x, 0, True, np.random.default_rng(1))
    for a, b in zip(flipped, x):
        assert torch.equal(a, b) or torch.equal(a, b.flip(2))
    aug = Augmenter(Augment(mixup_alpha=1.0), Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu")))
    batch = aug(x, torch.arange(4), np.random.default_rng(0))
    assert 0.0 <= batch.lam <= 1.0 and sorted(batch.y_b.tolist()) == [0, 1, 2, 3]
    logits = torch.randn(4, 4)
    ce = torch.nn.functional.cross_entropy
    expected = batch.lam * ce(logits, batch.y_a) + (1 - batch.lam) * ce(logits, batch.y_b)
    torch.testing.assert_close(batch.loss(logits), expected)


def test_augment_rejects_bad_values():
    with pytest.raises(ValueError, match="random_erasing must be in"):
        Augment(random_erasing=2.0)
    with pytest.raises(ValueError, match="policy must be one of"):
        Augment(policy="randaug")


def test_cifar100_python_pickles_and_imagefolder(tmp_path):
    import pickle

    from PIL import Image

    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("test", 20)):
        data = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(rng.integers(0, 100, n))}
        (d / split).write_bytes(pickle.dumps(data))
    c = load_data("cifar100", root=str(tmp_path), heldout_fraction=0.1)
    assert c.train.x.shape == (45, 3, 32, 32) and len(c.heldout) == 5 and len(c.test) == 20
    raw = pickle.loads((d / "test").read_bytes())
    assert torch.equal(c.test.x[3], torch.from_numpy(raw["data"][3].reshape(3, 32, 32)))
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / cls / f"{i}.png"
                )
    f = load_data("imagefolder", root=str(tmp_path / "imgs"), heldout_fraction=0.0, image_size=16)
    assert f.train.x.shape == (6, 3, 16, 16) and f.num_classes == 2 and f.test.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_crop_and_flip_in_one_gather_equal_cropping_then_flipping():
    x = torch.randint(0, 256, (64, 3, 10, 12), dtype=torch.uint8)
    out = crop_flip(x, 2, True, np.random.default_rng(3))
    draws = np.random.default_rng(3)
    off, flips = draws.integers(0, 5, size=(2, 64)), draws.random(64) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(64):
        ref = padded[b, :, off[0, b] : off[0, b] + 10, off[1, b] : off[1, b] + 12]
        assert torch.equal(out[b], ref.flip(2) if flips[b] else ref)
    assert 10 < flips.sum() < 54


def test_an_empty_or_missing_imagefolder_says_what_it_needs(tmp_path):
    from wab.errors import UserError
    from wab.parts.data import dataset_shape

    for d in ("train/cat", "test/cat"):
        (tmp_path / "imgs" / d).mkdir(parents=True)
    with pytest.raises(UserError, match=r"holds no images: it needs train/<class>/\*\.png .*0 training"):
        dataset_shape("imagefolder", root=str(tmp_path / "imgs"))
    with pytest.raises(UserError, match="dataset 'imagefolder' not found") as missing:
        dataset_shape("imagefolder", root=str(tmp_path / "nothing"))
    assert "download" not in str(missing.value)  # torchvision cannot fetch an image folder
