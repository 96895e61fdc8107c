"""Batched data augmentation on the training device.

Every random draw comes from the member's own ``numpy.random.Generator`` (saved in checkpoints,
so a resumed run sees the same augmentations), and the image work is done on whole batches of
uint8 tensors on the device: no DataLoader workers, no PIL per image.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from wab.parts.device import to_device

POLICIES = (None, "trivialaugment", "autoaugment", "autoaugment_imagenet", "randaugment")

# Named per-member recipes, as overrides of data.augment: an entry of population.member_augment (or
# of a method's list) may name one. "cutout" is half the image side (16 on CIFAR, DeVries & Taylor).
RECIPES: dict[str, dict[str, Any]] = {
    "none": {},
    "crop_flip": {},  # data.augment as it is (crop + flip on CIFAR): DART's plain member
    "flip": {"flip": True},
    "cutout": {"cutout": "half"},
    "cutmix": {"cutmix_alpha": 1.0},
    "mixup": {"mixup_alpha": 1.0},
    "trivialaugment": {"policy": "trivialaugment"},
    "autoaugment": {"policy": "autoaugment"},
    "autoaugment_imagenet": {"policy": "autoaugment_imagenet"},  # torchvision's default policy
    "randaugment": {"policy": "randaugment"},
}
# Named populations, a whole population.member_augment: a list (member i gets entry i, cycling) or a
# grid (shuffled with the run's seed, member i gets entry i, as PAPA's code draws its members).
MEMBER_LISTS: dict[str, list[str]] = {
    # DART (Jain et al., CVPR 2023): crop+flip, Cutout, CutMix, mixup and a policy per member
    "dart": ["crop_flip", "cutout", "cutmix", "mixup", "trivialaugment"],
}
MEMBER_GRIDS: dict[str, dict[str, list[float]]] = {
    # PAPA (Jolicoeur-Martineau et al., TMLR 2024): the per-member regularisation of its CIFAR runs
    "papa_grid": {
        "mixup_alpha": [0.0, 0.5, 1.0],
        "label_smoothing": [0.0, 0.05, 0.1],
        "cutmix_alpha": [0.0, 0.5, 1.0],
        "random_erasing": [0.0, 0.15, 0.35],
    },  # fmt: skip
    # model soups (Wortsman et al., 2022): ingredients from a random search over lr, weight decay,
    # label smoothing and mixup (here as scales of the run's lr around its weight decay)
    "soups_grid": {
        "lr_scale": [0.5, 1.0, 2.0],
        "weight_decay": [1e-4, 5e-4, 1e-3],
        "label_smoothing": [0.0, 0.1],
        "mixup_alpha": [0.0, 0.5],
    },  # fmt: skip
}


def recipe(name: str, image_size: int) -> dict[str, Any]:
    """The overrides a named recipe stands for on images of side ``image_size``."""
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {name!r}; known: {sorted(RECIPES)}")
    return {k: image_size // 2 if v == "half" else v for k, v in RECIPES[name].items()}


def member_entries(spec: Any, size: int, seed: int, image_size: int) -> list[dict[str, Any]]:
    """population.member_augment as one override dict per member: a named population (a list of
    MEMBER_LISTS or a grid of MEMBER_GRIDS) or a list of override mappings and recipe names."""
    if isinstance(spec, str):
        if spec in MEMBER_LISTS:
            spec = MEMBER_LISTS[spec]
        elif spec in MEMBER_GRIDS:
            grid = MEMBER_GRIDS[spec]
            entries = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
            order = np.random.default_rng([seed, 7]).permutation(len(entries))
            return [entries[order[i % len(entries)]] for i in range(size)]
        else:
            raise ValueError(f"population.member_augment={spec!r} is not a named population; known: "
                             f"{sorted(MEMBER_LISTS) + sorted(MEMBER_GRIDS)} (or a list of overrides)")  # fmt: skip
    entries = []
    for i, e in enumerate(spec or []):
        if isinstance(e, str):
            e = recipe(e, image_size)
        if not isinstance(e, dict):
            known = ", ".join(sorted(RECIPES))
            raise ValueError(f"population.member_augment[{i}]={e!r} must be a mapping of overrides (e.g. "
                             f"{{mixup_alpha: 1.0, lr_scale: 0.5}}) or a recipe: {known}")  # fmt: skip
        entries.append(dict(e))
    return [entries[i % len(entries)] for i in range(size)] if entries else []


@dataclass(frozen=True)
class Augment:
    """One member's augmentation settings."""

    crop_padding: int = 0  # random crop with this zero padding (4 on CIFAR)
    flip: bool = False  # random horizontal flip
    cutout: int = 0  # side of a zeroed square at a random centre (DeVries & Taylor, 2017); 0 = off
    random_erasing: float = 0.0  # probability of erasing a random rectangle (Zhong et al., 2020)
    mixup_alpha: float = 0.0  # Beta(a, a) mixing of pairs (Zhang et al., 2018); 0 = off
    cutmix_alpha: float = 0.0  # Beta(a, a) box pasting (Yun et al., 2019); 0 = off
    label_smoothing: float = 0.0
    policy: str | None = None  # a policy augmentation on uint8 images: trivialaugment | autoaugment | randaugment
    policy_after_crop: bool = False  # the policy after the crop and flip (Lookaround's code) instead of before

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"augment.policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("random_erasing", "label_smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("crop_padding", "cutout", "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict | None) -> Augment:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def merged(self, overrides: dict | None) -> Augment:
        return Augment.from_dict({**asdict(self), **(overrides or {})})


@dataclass
class Batch:
    """Normalised inputs and the (possibly mixed) targets: loss = lam*CE(y_a) + (1-lam)*CE(y_b)."""

    x: Tensor
    y_a: Tensor
    y_b: Tensor
    lam: float
    label_smoothing: float

    def loss(self, logits: Tensor) -> Tensor:
        loss = F.cross_entropy(logits, self.y_a, label_smoothing=self.label_smoothing)
        if self.lam < 1.0:
            loss = self.lam * loss + (1.0 - self.lam) * F.cross_entropy(
                logits, self.y_b, label_smoothing=self.label_smoothing
            )
        return loss


class Normalizer:
    """uint8 images to normalised floats: x / 255, minus the mean, over the std."""

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, channels_last: bool = False
    ) -> None:
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = mean_t / std_t

    def __call__(self, x: Tensor) -> Tensor:
        return torch.addcmul(-self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)


def crop_flip(x: Tensor, padding: int, flip: bool, rng: np.random.Generator) -> Tensor:
    """Random crop (zero padding ``padding``) and/or random horizontal flip of each image, as one
    gather over the batch: the crop offsets and flips only change which pixel each output reads."""
    b, c, h, w = x.shape
    device = x.device
    xp = F.pad(x, (padding,) * 4) if padding else x
    hp, wp = h + 2 * padding, w + 2 * padding
    if padding:
        oy, ox = to_device(rng.integers(0, 2 * padding + 1, size=(2, b)), device)
    else:
        oy = ox = torch.zeros(b, dtype=torch.long, device=device)
    cols = torch.arange(w, device=device).expand(b, w)
    if flip:
        mask = to_device(rng.random(b) < 0.5, device).view(b, 1)
        cols = torch.where(mask, w - 1 - cols, cols)
    rows = oy.view(b, 1, 1) + torch.arange(h, device=device).view(1, h, 1)
    idx = (rows * wp + (ox.view(b, 1, 1) + cols.view(b, 1, w))).view(b, 1, h * w)
    return xp.reshape(b, c, hp * wp).gather(2, idx.expand(b, c, h * w)).view(b, c, h, w)


def _box_mask(h: int, w: int, top: Tensor, left: Tensor, bottom: Tensor, right: Tensor) -> Tensor:
    """[B, 1, H, W] boolean mask of the boxes [top, bottom) x [left, right)."""
    r = torch.arange(h, device=top.device).view(1, h, 1)
    c = torch.arange(w, device=top.device).view(1, 1, w)
    inside = (
        (r >= top.view(-1, 1, 1))
        & (r < bottom.view(-1, 1, 1))
        & (c >= left.view(-1, 1, 1))
        & (c < right.view(-1, 1, 1))
    )
    return inside[:, None]


def cutout(x: Tensor, size: int, rng: np.random.Generator) -> Tensor:
    """Zero a size x size square (clipped at the border) at a uniformly random centre per image."""
    b, _, h, w = x.shape
    cy = to_device(rng.integers(0, h, b), x.device)
    cx = to_device(rng.integers(0, w, b), x.device)
    mask = _box_mask(h, w, cy - size // 2, cx - size // 2, cy - size // 2 + size, cx - size // 2 + size)
    return x.masked_fill(mask, 0.0)


def random_erasing(x: Tensor, p: float, rng: np.random.Generator) -> Tensor:
    """Erase (set to 0) a rectangle of area 2-33% and aspect 0.3-3.3 with probability p per image."""
    b, _, h, w = x.shape
    area = rng.uniform(0.02, 0.33, b) * h * w
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(1 / 0.3), b))
    eh = np.clip(np.round(np.sqrt(area * aspect)), 1, h).astype(np.int64)
    ew = np.clip(np.round(np.sqrt(area / aspect)), 1, w).astype(np.int64)
    top = rng.integers(0, h - eh + 1)
    left = rng.integers(0, w - ew + 1)
    on = rng.random(b) < p
    t = [to_device(a, x.device) for a in (top, left, top + eh, left + ew)]
    mask = _box_mask(h, w, *t) & to_device(on, x.device).view(-1, 1, 1, 1)
    return x.masked_fill(mask, 0.0)


def _policy(x: Tensor, name: str) -> Tensor:
    from torchvision.transforms import v2

    ops = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment,
           "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
           "autoaugment_imagenet": v2.AutoAugment}  # fmt: skip
    op = ops[name]()
    return torch.stack([op(img) for img in x])


class Augmenter:
    """Turns one member's uint8 batch into a normalised, augmented :class:`Batch`."""

    def __init__(self, aug: Augment, normalize: Normalizer) -> None:
        self.aug = aug
        self.normalize = normalize

    def __call__(self, x: Tensor, y: Tensor, rng: np.random.Generator) -> Batch:
        a = self.aug
        if a.policy and not a.policy_after_crop:
            x = self._policy(x, rng)
        if a.crop_padding or a.flip:
            x = crop_flip(x, a.crop_padding, a.flip, rng)
        if a.policy and a.policy_after_crop:
            x = self._policy(x, rng)
        xf = self.normalize(x)
        if a.cutout:
            xf = cutout(xf, a.cutout, rng)
        if a.random_erasing:
            xf = random_erasing(xf, a.random_erasing, rng)
        y_b, lam = y, 1.0
        use_mix = a.mixup_alpha > 0 or a.cutmix_alpha > 0
        if use_mix:
            perm = to_device(rng.permutation(len(y)), y.device)
            y_b = y[perm]
            use_cutmix = a.cutmix_alpha > 0 and (a.mixup_alpha == 0 or rng.random() < 0.5)
            if use_cutmix:
                lam = float(rng.beta(a.cutmix_alpha, a.cutmix_alpha))
                h, w = xf.shape[-2:]
                cut = np.sqrt(1.0 - lam)
                ch, cw = int(h * cut), int(w * cut)
                cy, cx = int(rng.integers(h)), int(rng.integers(w))
                t, b_ = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
                l_, r = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
                xf = xf.clone()
                xf[:, :, t:b_, l_:r] = xf[perm][:, :, t:b_, l_:r]
                lam = 1.0 - float((b_ - t) * (r - l_)) / (h * w)
            else:
                lam = float(rng.beta(a.mixup_alpha, a.mixup_alpha))
                xf = torch.lerp(xf[perm], xf, lam)
        return Batch(xf, y, y_b, lam, a.label_smoothing)

    def _policy(self, x: Tensor, rng: np.random.Generator) -> Tensor:
        # torchvision draws the policy's ops from torch's global RNG: seed it from the member's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            return _policy(x, self.aug.policy)
