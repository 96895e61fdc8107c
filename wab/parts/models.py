"""Model zoo: tiny MLP and CNN (tests, CPU), CIFAR ResNet-18 (3x3 stem, as in PAPA), ResNet-20,
VGG-16-BN, and any timm model by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from wab.errors import did_you_mean


class MLP(nn.Module):
    """Flatten, one hidden layer with BatchNorm, linear head."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU blocks (the last two strided), global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_channels, width),
            _conv_bn(width, 2 * width, 2),
            _conv_bn(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, option_a: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        self.pad = 0
        if stride != 1 or cin != cout:
            if option_a:  # ResNet-20 (He et al., 2016): strided identity, zero-padded channels
                self.pad = cout - cin
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad:
            short = x[:, :, :: self.stride, :: self.stride]
            short = nn.functional.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            short = self.shortcut(x)
        return self.relu(out + short)


class ResNet(nn.Module):
    """CIFAR ResNets: 3x3 stem, no max-pool."""

    def __init__(
        self, blocks: list[int], widths: list[int], in_channels: int, num_classes: int, option_a: bool
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, option_a))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))


def resnet18(in_channels: int, num_classes: int) -> ResNet:
    """ResNet-18 for CIFAR (3x3 stem, as in the PAPA code)."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], in_channels, num_classes, option_a=False)


def resnet20(in_channels: int, num_classes: int) -> ResNet:
    """ResNet-20 of He et al. (2016) for CIFAR: 3 stages of 3 blocks, widths 16/32/64."""
    return ResNet([3, 3, 3], [16, 32, 64], in_channels, num_classes, option_a=True)


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs (one linear classifier, as in the SWA code)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


MODELS = ("mlp", "cnn", "resnet18", "resnet20", "vgg16_bn", "timm")


def model_factory(name: str, in_channels: int, image_size: int, num_classes: int, **kwargs) -> Callable[[], nn.Module]:
    """A zero-argument builder for the named model (the population calls it once per member)."""
    if name == "mlp":
        return lambda: MLP(in_channels, image_size, num_classes, hidden=kwargs.get("width", 64))
    if name == "cnn":
        return lambda: TinyCNN(in_channels, num_classes, width=kwargs.get("width", 16))
    if name == "resnet18":
        return lambda: resnet18(in_channels, num_classes)
    if name == "resnet20":
        return lambda: resnet20(in_channels, num_classes)
    if name == "vgg16_bn":
        return lambda: VGG(in_channels, num_classes)
    if name == "timm":
        import timm

        arch = kwargs.get("arch")
        known = timm.list_models()
        if not arch or arch not in known:
            hint = did_you_mean(str(arch), known) if arch else ""
            raise ValueError(f"model=timm needs model.arch set to a timm model name, got {arch!r}{hint}")
        return lambda: timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
