import sys
import textwrap

import pytest

import wab.method as method_api
from wab.errors import UserError
from wab.method import HOOKS, Method, available_methods, get_method, register, unregister
from wab.run.lifecycle import run


def test_every_hook_is_reached_with_the_run_state(tiny, registered):
    calls = []

    @registered("test_recorder")
    class Recorder(Method):
        def setup(self, run):
            calls.append(("setup", run.step, run.epoch))

        def after_step(self, run):
            calls.append(("after_step", run.step, run.epoch_step, run.lr, run.lr0))

        def after_epoch(self, run):
            calls.append(("after_epoch", run.step, run.epoch))

        def finalize(self, run):
            calls.append(("finalize", run.step, run.epoch))
            return {"member0": run.population.model_from(*run.population.member_state(0))}

    cfg = tiny("method.name=test_recorder", "trainer.epochs=2")
    rec = run(cfg)
    assert rec["status"] == "done", rec.get("traceback")
    spe = rec["steps"] // 2
    kinds = [c[0] for c in calls]
    assert set(kinds) == set(HOOKS)
    assert calls[0] == ("setup", 0, 0)
    steps = [c for c in calls if c[0] == "after_step"]
    assert [c[1] for c in steps] == list(range(1, 2 * spe + 1))
    assert [c[2] for c in steps] == list(range(1, spe + 1)) * 2
    assert all(c[4] == cfg["optim"]["lr"] for c in steps) and steps[-1][3] < steps[0][3]  # cosine
    assert [c for c in calls if c[0] == "after_epoch"] == [("after_epoch", spe, 0), ("after_epoch", 2 * spe, 1)]
    assert kinds[-1] == "finalize" and kinds.count("finalize") == 1
    assert rec["metrics"]["final_model"] == "member0"
    assert rec["metrics"]["final"]["member0"]["acc"] == rec["metrics"]["final_acc"]


def test_hooks_not_defined_are_not_called(tiny, registered, monkeypatch):
    """The trainer calls a hook only where the method defines it: the base class's hooks are made
    to raise, and a method that defines only ``finalize`` still trains to the end."""
    assert get_method("independent").overridden_hooks() == set()

    def never(self, *args):
        raise AssertionError("a hook the method does not define was called")

    for hook in ("setup", "after_step", "after_epoch"):
        monkeypatch.setattr(Method, hook, never)

    @registered("test_only_finalize")
    class OnlyFinalize(Method):
        def finalize(self, run):
            return {"member0": run.population.model_from(*run.population.member_state(0))}

    assert OnlyFinalize.overridden_hooks() == {"finalize"}
    rec = run(tiny("method=test_only_finalize"))
    assert rec["status"] == "done", rec.get("traceback")
    assert rec["metrics"]["final_model"] == "member0"


def test_duplicate_names_are_refused(registered):
    @registered("test_dup")
    class A(Method):
        pass

    with pytest.raises(ValueError, match="already registered"):

        @register("test_dup")
        class B(Method):
            pass


def test_unknown_method_lists_the_known_ones(tiny):
    with pytest.raises(UserError, match=r"unknown method .nope.; known methods: .*independent"):
        get_method("nope")
    rec = run(tiny("method.name=nope"))
    assert rec["status"] == "failed" and "known methods" in rec["error"]


def test_a_plugin_from_outside_the_package_registers_through_the_entry_point(tmp_path, monkeypatch, tiny):
    """A real installed distribution (a .dist-info with entry_points.txt on sys.path)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "outside_plugin.py").write_text(
        textwrap.dedent(
            """
            from wab.method import Method

            class HalfWay(Method):
                '''Pulls every member half way to the mean after each epoch.'''
                def after_epoch(self, run):
                    run.population.lerp_toward_mean(0.5)
            """
        )
    )
    dist = site / "outside_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[wab.methods]\nhalfway = outside_plugin:HalfWay\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(method_api, "_loaded", False)
    try:
        assert "halfway" in available_methods()
        rec = run(tiny("method.name=halfway"))
        assert rec["status"] == "done", rec.get("traceback")
        assert rec["comm"]["ops"]["lerp_toward_mean"]["calls"] == 2
    finally:
        unregister("halfway")
        sys.modules.pop("outside_plugin", None)


def test_methods_declare_needs(tiny, registered):
    @registered("test_needs_heldout")
    class NeedsHeldout(Method):
        needs_heldout = True

    rec = run(tiny("method.name=test_needs_heldout", "data.heldout_fraction=0"))
    assert rec["status"] == "failed" and "needs a held-out split" in rec["error"]
