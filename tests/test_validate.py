"""Configs are checked before anything runs: each problem named, with what is allowed."""

import pytest

from wab.run.config import compose_config
from wab.run.validate import InvalidConfig, check_config, compose_checked

TINY = ["data=digits", "population.size=2", "trainer.epochs=1", "device=cpu"]


def problems(*overrides):
    return check_config(compose_config([*TINY, *overrides]))


def test_the_defaults_and_every_method_at_its_defaults_are_valid():
    from wab.run.config import group_options

    for method in group_options("method"):
        assert problems(f"method={method}") == [], method


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["+method.pp=1", "method=wash"], "unknown key method.pp (did you mean 'method.p'?)"),
        (["+model.depth=3"], "unknown key model.depth (did you mean 'model.width'?)"),
        (["method=wash", "method.p=abc"], "method.p=abc must be a number (default 0.01)"),
        (["trainer.epochs=2.5"], "trainer.epochs=2.5 must be an integer (default 10)"),
        (["method.name=wash"], "method 'wash' lacks its settings p, schedule, convention, lr_scaled, shuffle_buffers"),
        (["method=wash", "method.p=2"], "wash p must be in [0, 1], got 2.0"),
        (["method=twa", "data.heldout_fraction=0"], "twa variant v trains on the held-out split"),
        (["method=soups", "data.heldout_fraction=0"], "soups needs a held-out split"),
        (["population.finalizers=[greedy_soups]"], "unknown finalizer 'greedy_soups' (did you mean 'greedy_soup'?)"),
        (["trainer.batch_size=5000"], "trainer.batch_size=5000 exceeds the 1408 training images"),
        (["optim.schedule=cosin"], "unknown lr schedule 'cosin'"),
        (["model=timm", "model.arch=resnett18"], "model=timm needs model.arch set to a timm model name"),
        (["population.member_augment=[{flipp: true}]"], "unknown augmentation option(s) ['flipp']"),
        (["device=gpu"], "device=gpu is not a device; allowed: auto, cpu, cuda, cuda:<index>"),
    ],
)
def test_each_bad_value_is_named_with_what_is_allowed(overrides, expected):
    found = problems(*overrides)
    assert any(expected in p for p in found), found


def test_a_missing_dataset_and_a_device_that_is_not_there(tmp_path, monkeypatch):
    monkeypatch.setenv("WAB_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    (found,) = problems("data=cifar10", f"data.root={tmp_path / 'nothing'}")
    assert "dataset 'cifar10' not found" in found and "WAB_DATA" in found
    cuda = check_config(compose_config([*TINY, "device=cuda"]), gpus=0)
    assert any("the jobs ask for no GPU" in p for p in cuda)
    assert check_config(compose_config([*TINY, "device=cuda"]), gpus=1) == []  # the cluster's node has one


def test_hydra_errors_become_one_line_with_a_suggestion():
    cases = {
        "trainer.epoch=3": "unknown key trainer.epoch (did you mean 'trainer.epochs'?)",
        "method=wahs": "unknown method 'wahs' (did you mean 'wash'?); known: aswa,",
        "model=resnet": "unknown model 'resnet' (did you mean 'resnet20'?)",
        "data.augment.flipp=true": "unknown key data.augment.flipp (did you mean 'data.augment.flip'?)",
    }
    for override, message in cases.items():
        with pytest.raises(InvalidConfig) as e:
            compose_checked([override])
        assert e.value.problems == [message] or e.value.problems[0].startswith(message)
        assert "\n" not in str(e.value)


def test_a_plugin_method_is_selected_overridden_and_hashed_like_a_built_in_one(registered):
    """A plugin's declared defaults are its config node: ``method=<name>`` selects it, its keys
    are overridden without ``+``, its defaults are written into the run's config (so changing one
    changes the run id), and a typo gets a "did you mean"."""
    from wab.method import Method
    from wab.run.records import run_id

    @registered("test_plugin_hp")
    class Plugin(Method):
        hyperparameters = {"rate": 0.5}

    cfg = compose_config([*TINY, "method=test_plugin_hp"])
    assert cfg["method"]["rate"] == 0.5 and check_config(cfg) == []
    assert problems("method=test_plugin_hp", "method.rate=0.7") == []
    assert problems("method=test_plugin_hp", "method.rate=abc") == ["method.rate=abc must be a number (default 0.5)"]
    assert problems("method=test_plugin_hp", "+method.rat=0.7") == [
        "unknown key method.rat (did you mean 'method.rate'?)"
    ]
    assert "select it with method=test_plugin_hp" in problems("method.name=test_plugin_hp")[0]
    Plugin.hyperparameters = {"rate": 0.6}  # a new default: another run
    assert run_id(compose_config([*TINY, "method=test_plugin_hp"])) != run_id(cfg)


def test_a_config_with_several_bad_values_names_every_one():
    found = problems("population.size=0", "trainer.epochs=0", "seed=-1", "trainer.members=vmap")
    for expected in (
        "population.size must be >= 1, got 0",
        "trainer.epochs must be >= 1, got 0",
        "seed=-1 must be an integer >= 0",
        "trainer.members='vmap' must be one of loop, batched, auto",
    ):
        assert sum(expected in p for p in found) == 1, (expected, found)  # each once, each its own line
