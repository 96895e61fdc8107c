"""The training loop of the papers' own code, for side-by-side benchmarks: N separate models and
optimizers, each member with its own torchvision-style Dataset (PIL image per sample, PIL
transforms) and DataLoader."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from wab.parts.data import ImageSet


class PILDataset(Dataset):
    """As torchvision.datasets.CIFAR10: a uint8 HWC array, one PIL image per __getitem__."""

    def __init__(self, images: ImageSet, transform) -> None:
        self.x = images.x.permute(0, 2, 3, 1).cpu().numpy()
        self.y = images.y.cpu().numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i]
        img = Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img)
        return self.transform(img), int(self.y[i])


def crop_flip_transform(mean, std, size: int, padding: int = 4):
    return transforms.Compose(
        [transforms.RandomCrop(size, padding=padding), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
         transforms.Normalize(mean, std)]
    )  # fmt: skip


def member_loaders(images: ImageSet, mean, std, n: int, batch_size: int, workers: int, seed: int = 0):
    """One shuffled DataLoader per member, each with its own generator (own data order)."""
    ds = PILDataset(images, crop_flip_transform(mean, std, images.x.shape[-1]))
    return [
        DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                   generator=torch.Generator().manual_seed(seed + i), persistent_workers=workers > 0)
        for i in range(n)
    ]  # fmt: skip


def loop_step(models: list[nn.Module], optimizers: list[torch.optim.Optimizer], iters: list) -> None:
    """One step of each member: its own batch from its own loader, its own optimizer."""
    for model, opt, it in zip(models, optimizers, iters):
        x, y = next(it)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def sgd(models: list[nn.Module], lr: float = 0.05) -> list[torch.optim.Optimizer]:
    return [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4) for m in models]
