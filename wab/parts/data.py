"""Datasets held in memory as uint8 tensors on the training device.

``digits`` (scikit-learn's bundled 8x8 set) is the embedded default and needs no files.
``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` and ``imagefolder`` are read from a data
root: the config's ``data.root``, else ``$WAB_DATA``, else ``~/.cache/wab/data``. The loaders read
the official raw files (MNIST idx ``.gz``, CIFAR-10 binary ``.bin`` or ``.bin.xz``, CIFAR python
pickles), so the offline copies in ``../shared/data`` work as they are; with ``data.download``
torchvision fetches what is missing into the first root.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from wab.errors import UserError, did_you_mean
from wab.parts.files import atomic_write

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder")

# md5 of each decompressed CIFAR-10 binary batch (the official cifar-10-binary.tar.gz contents).
CIFAR10_BIN_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}


class DatasetNotFound(UserError, FileNotFoundError):
    """A dataset's files are in none of the data roots."""


@dataclass
class ImageSet:
    """Images as uint8 [M, C, H, W] and labels as int64 [M], on one device."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device))


@dataclass
class DataSplits:
    """Train (without the held-out slice), held-out (a fixed-seed slice of train), and test."""

    name: str
    train: ImageSet
    heldout: ImageSet
    test: ImageSet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.x.shape[-1]


def data_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Where datasets are looked for, in order."""
    roots = [root, os.environ.get("WAB_DATA"), Path.home() / ".cache" / "wab" / "data"]
    return [Path(r).expanduser() for r in roots if r]


def _cache_dir() -> Path:
    return Path(os.environ.get("WAB_CACHE", Path.home() / ".cache" / "wab"))


# --------------------------------------------------------------------------------- readers
def _open_maybe_compressed(path: Path) -> bytes:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    return path.read_bytes()


def _find(directory: Path, stem: str) -> Path | None:
    for suffix in ("", ".gz", ".xz"):
        p = directory / (stem + suffix)
        if p.exists():
            return p
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format), optionally gzipped."""
    raw = _open_maybe_compressed(path)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_PY = ([f"data_batch_{i}" for i in range(1, 6)], "test_batch")
CIFAR100_PY = (["train"], "test")
_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


@dataclass(frozen=True)
class DatasetShape:
    """What a dataset is made of, known without reading it: images [C, H, W], classes, sizes."""

    channels: int
    image_size: int
    num_classes: int
    train: int  # training images before the held-out slice
    test: int


SHAPES = {
    "digits": DatasetShape(1, 8, 10, 1437, 360),
    "mnist": DatasetShape(1, 28, 10, 60_000, 10_000),
    "fashion_mnist": DatasetShape(1, 28, 10, 60_000, 10_000),
    "cifar10": DatasetShape(3, 32, 10, 50_000, 10_000),
    "cifar100": DatasetShape(3, 32, 100, 50_000, 10_000),
}


def _mnist_files(name: str, root: Path) -> list[Path] | None:
    files = [_find(root / _FOLDERS[name] / "raw", s) for s in MNIST_STEMS]
    return files if all(files) else None  # type: ignore[return-value]


def _imagefolder_dirs(root: Path) -> tuple[Path, Path] | None:
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    return (root / "train", test_dir) if (root / "train").is_dir() and test_dir is not None else None


def _present(name: str, root: Path) -> bool:
    """Whether ``root`` holds the dataset's files (nothing is read)."""
    if name in _FOLDERS:
        return _mnist_files(name, root) is not None
    if name == "cifar10":
        return all(_find(root / "cifar-10-batches-bin", f) for f in CIFAR10_BIN_MD5) or all(
            (root / "cifar-10-batches-py" / f).exists() for f in [*CIFAR10_PY[0], CIFAR10_PY[1]]
        )
    if name == "cifar100":
        return all((root / "cifar-100-python" / f).exists() for f in [*CIFAR100_PY[0], CIFAR100_PY[1]])
    return _imagefolder_dirs(root) is not None


def find_dataset(name: str, root: str | os.PathLike | None = None) -> Path | None:
    """The first data root that holds the dataset's files (``digits`` needs none: None)."""
    if name == "digits":
        return None
    return next((r for r in data_roots(root) if _present(name, r)), None)


def _not_found(name: str, root: str | os.PathLike | None) -> DatasetNotFound:
    looked = ", ".join(str(r) for r in data_roots(root))
    fetch = "" if name == "imagefolder" else ", or pass data.download=true to let torchvision fetch it"
    return DatasetNotFound(
        f"dataset {name!r} not found: looked for {_HOW_TO_GET[name]} under {looked}. "
        f"Set data.root=<dir> or WAB_DATA=<dir> to a folder holding those files "
        f"(e.g. WAB_DATA=../shared/data){fetch}."
    )


def dataset_shape(name: str, root: str | None = None, download: bool = False, image_size: int = 32) -> DatasetShape:
    """The dataset's shape without decoding it; raises :class:`DatasetNotFound` when its files are
    missing (unless ``download``, which fetches them at run time)."""
    if name not in DATASETS:
        raise UserError(
            f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; known datasets: {', '.join(DATASETS)}"
        )
    found = find_dataset(name, root)
    if name != "digits" and found is None and not (download and name != "imagefolder"):
        raise _not_found(name, root)
    if name != "imagefolder":
        return SHAPES[name]
    train_dir, test_dir = _imagefolder_dirs(found)  # type: ignore[arg-type, misc]
    classes = [d for d in sorted(train_dir.iterdir()) if d.is_dir()]

    def count(d: Path) -> int:
        return sum(1 for c in d.iterdir() if c.is_dir() for f in c.iterdir() if f.is_file())

    shape = DatasetShape(3, image_size, len(classes), count(train_dir), count(test_dir))
    if not classes or not shape.train or not shape.test:
        raise UserError(
            f"imagefolder {found} holds no images: it needs {_HOW_TO_GET[name]} "
            f"(found {len(classes)} class folders, {shape.train} training and {shape.test} test files)"
        )
    return shape


def _progress(items, desc: str):
    """A progress bar over the files being decoded, shown on a terminal only."""
    return tqdm(items, desc=desc, leave=False, disable=None)


def _load_mnist_like(name: str, root: Path) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = (read_idx(f) for f in _progress(_mnist_files(name, root), f"decoding {name}"))
    return xtr[:, None], ytr, xte[:, None], yte


def _read_cifar10_bin(directory: Path) -> tuple[np.ndarray, ...] | None:
    files = {name: _find(directory, name) for name in CIFAR10_BIN_MD5}
    if not all(files.values()):
        return None
    cache = _cache_dir() / "cifar10_bin.npz"
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files.values())
    if cache.exists():
        try:
            with np.load(cache) as z:
                if str(z["stamp"]) == stamp:
                    return z["xtr"], z["ytr"], z["xte"], z["yte"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a cache that cannot be read is decoded again and replaced
    parts = {}
    for name, path in _progress(list(files.items()), "decoding cifar10"):
        raw = _open_maybe_compressed(path)
        digest = hashlib.md5(raw).hexdigest()
        if digest != CIFAR10_BIN_MD5[name]:
            raise ValueError(f"{path}: md5 {digest} of the decompressed batch != expected {CIFAR10_BIN_MD5[name]}")
        rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)
        parts[name] = (rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0].astype(np.int64))
    train = [parts[f"data_batch_{i}.bin"] for i in range(1, 6)]
    xtr, ytr = np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])
    xte, yte = parts["test_batch.bin"]
    # runs of a sweep decode at the same time: each writes its own temporary file
    atomic_write(cache, lambda fh: np.savez(fh, xtr=xtr, ytr=ytr, xte=xte, yte=yte, stamp=np.array(stamp)))
    return xtr, ytr, xte, yte


def _read_cifar_pickles(directory: Path, train: list[str], test: str, key: str) -> tuple[np.ndarray, ...]:
    def load(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in _progress(names, f"decoding {directory.name}"):
            with open(directory / name, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    return (*load(train), *load([test]))


def _load_cifar(name: str, root: Path) -> tuple[np.ndarray, ...]:
    if name == "cifar10":
        found = _read_cifar10_bin(root / "cifar-10-batches-bin")
        return found if found is not None else _read_cifar_pickles(root / "cifar-10-batches-py", *CIFAR10_PY, "labels")
    return _read_cifar_pickles(root / "cifar-100-python", *CIFAR100_PY, "fine_labels")


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))  # fixed train/test split: 1437 / 360
    test, train = order[:360], order[360:]
    return x[train], y[train], x[test], y[test]


def _load_imagefolder(root: Path, image_size: int) -> tuple[np.ndarray, ...]:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    tf = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.PILToTensor()]
    )
    out = []
    for d in _imagefolder_dirs(root):  # type: ignore[union-attr]
        ds = ImageFolder(str(d), transform=tf)
        images = [np.asarray(img) for img, _ in _progress(ds, f"decoding {d.name}/")]
        out += [np.stack(images), np.asarray(ds.targets, dtype=np.int64)]
    return tuple(out)


def _download(name: str, root: Path) -> None:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST,
           "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]  # fmt: skip
    for train in (True, False):
        cls(str(root), train=train, download=True)


_HOW_TO_GET = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "fashion_mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
    "cifar10": "cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin[.xz] or cifar-10-batches-py/",
    "cifar100": "cifar-100-python/{train,test}",
    "imagefolder": "train/<class>/*.png and test/<class>/*.png (or val/)",
}


def _load_arrays(name: str, root: str | None, download: bool, image_size: int) -> tuple[np.ndarray, ...]:
    if name == "digits":
        return _load_digits()
    found = find_dataset(name, root)
    if found is None and download and name != "imagefolder":
        _download(name, data_roots(root)[0])
        found = find_dataset(name, root)
    if found is None:
        raise _not_found(name, root)
    if name in _FOLDERS:
        return _load_mnist_like(name, found)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, found)
    return _load_imagefolder(found, image_size)


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, scaled to [0, 1], in float64."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros_like(s)
    for a in range(0, len(x), 4096):
        chunk = x[a : a + 4096].double().div_(255)
        s += chunk.sum((0, 2, 3))
        s2 += chunk.square().sum((0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def load_data(
    name: str,
    root: str | None = None,
    heldout_fraction: float = 0.02,
    heldout_seed: int = 0,
    device: torch.device | str = "cpu",
    download: bool = False,
    image_size: int = 32,
    train_subset: int | None = None,
) -> DataSplits:
    """Load a dataset and carve a fixed-seed held-out slice out of its training set."""
    _check_dataset_args(name, heldout_fraction)
    xtr, ytr, xte, yte = _load_arrays(name, root, download, image_size)
    x, y = torch.from_numpy(np.array(xtr)), torch.from_numpy(np.array(ytr))
    order = torch.from_numpy(np.random.default_rng(heldout_seed).permutation(len(y)))
    n_held, n_train = split_sizes(len(y), heldout_fraction, train_subset)
    held, train = order[:n_held], order[n_held:][:n_train]
    mean, std = channel_stats(x[train])
    test = ImageSet(torch.from_numpy(np.array(xte)), torch.from_numpy(np.array(yte)))
    return DataSplits(
        name=name,
        train=ImageSet(x[train], y[train]).to(device),
        heldout=ImageSet(x[held], y[held]).to(device),
        test=test.to(device),
        num_classes=int(max(y.max(), test.y.max())) + 1,
        mean=mean,
        std=std,
    )


def _check_dataset_args(name: str, heldout_fraction: float) -> None:
    if name not in DATASETS:
        raise UserError(
            f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; known datasets: {', '.join(DATASETS)}"
        )
    if not 0.0 <= heldout_fraction < 1.0:
        raise UserError(f"data.heldout_fraction must be in [0, 1), got {heldout_fraction}")


def split_sizes(n: int, heldout_fraction: float, train_subset: int | None) -> tuple[int, int]:
    """(held-out, train) sizes of a training set of n images."""
    n_held = int(round(heldout_fraction * n))
    n_train = n - n_held
    if train_subset is not None:
        if train_subset < 1:
            raise UserError(f"data.train_subset must be null or >= 1, got {train_subset}")
        n_train = min(n_train, train_subset)
    return n_held, n_train


def describe_data(
    name: str,
    root: str | None = None,
    heldout_fraction: float = 0.02,
    download: bool = False,
    image_size: int = 32,
    train_subset: int | None = None,
) -> DataSplits:
    """The splits with the right shapes on the meta device, reading no image: what a config is
    checked against before anything runs. Raises :class:`DatasetNotFound` when the files are missing."""
    _check_dataset_args(name, heldout_fraction)
    shape = dataset_shape(name, root, download, image_size)
    n_held, n_train = split_sizes(shape.train, heldout_fraction, train_subset)

    def images(n: int) -> ImageSet:
        x = torch.empty(n, shape.channels, shape.image_size, shape.image_size, dtype=torch.uint8, device="meta")
        return ImageSet(x, torch.empty(n, dtype=torch.long, device="meta"))

    ones = (1.0,) * shape.channels
    return DataSplits(name, images(n_train), images(n_held), images(shape.test), shape.num_classes, ones, ones)
