import pytest
import torch

from wab.parts.models import MODELS, model_factory


@pytest.mark.parametrize("name, kwargs", [("mlp", {}), ("cnn", {}), ("resnet18", {}), ("resnet20", {}),
                                          ("vgg16_bn", {}), ("timm", {"arch": "resnet10t"})])  # fmt: skip
def test_every_model_builds_and_classifies_32x32(name, kwargs):
    model = model_factory(name, 3, 32, 10, **kwargs)()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_resnet18_has_the_3x3_stem_and_resnet20_its_size():
    r18 = model_factory("resnet18", 3, 32, 10)()
    assert r18.stem[0].kernel_size == (3, 3) and r18.stem[0].stride == (1, 1)
    assert sum(p.numel() for p in r18.parameters()) == 11_173_962
    r20 = model_factory("resnet20", 3, 32, 10)()
    assert sum(p.numel() for p in r20.parameters()) == 269_722  # He et al.: 0.27M


def test_unknown_models_are_named():
    with pytest.raises(ValueError, match=f"unknown model 'vit'; known models: {', '.join(MODELS)}"):
        model_factory("vit", 3, 32, 10)
    with pytest.raises(ValueError, match="model.arch set to a timm model name, got 'nope'"):
        model_factory("timm", 3, 32, 10, arch="nope")
    with pytest.raises(ValueError, match=r"got 'resnett18' \(did you mean 'resnet18'\?\)"):
        model_factory("timm", 3, 32, 10, arch="resnett18")
