"""wab as a user installs it: a wheel with its configs, run from another directory, and a method
shipped by a package of its own (entry point, its own YAML with optimizer defaults, and a class
selected as ``method=pkg.module:Class``), in a local sweep and a report."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
import yaml

from tests.installed import build_and_install, copy_of_wab, installed_env, wab_installed

pytestmark = pytest.mark.slow

TINY = ["data=digits", "model=cnn", "model.width=4", "population.size=2", "trainer.epochs=1",
        "trainer.batch_size=128", "trainer.progress=false", "device=cpu"]  # fmt: skip


def _ok(proc) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_an_installed_wheel_runs_without_the_checkout(tmp_path):
    site = tmp_path / "site"
    wheel = build_and_install(copy_of_wab(tmp_path / "src"), site, tmp_path)
    assert any(n.startswith("wab/configs/method/") for n in zipfile.ZipFile(wheel).namelist())
    env, cwd = installed_env(site), tmp_path / "elsewhere"
    cwd.mkdir()
    probe = subprocess.run([sys.executable, "-S", "-c", "import wab; print(wab.__file__, wab.CONFIG_DIR)"],
                           env=env, capture_output=True, text=True, cwd=cwd)  # fmt: skip
    assert probe.stdout.split() == [str(site / "wab" / "__init__.py"), str(site / "wab" / "configs")]
    _ok(wab_installed(["train", "method=wash", *TINY, "out_dir=runs"], cwd, env))
    (done,) = (cwd / "runs").glob("wash-*/done")
    (cwd / "grid.yaml").write_text(yaml.safe_dump({"base": TINY, "grid": {"method": ["independent", "papa"]},
                                                   "out_dir": "sweep"}))  # fmt: skip
    _ok(wab_installed(["sweep", "grid.yaml", "--cluster", "debug"], cwd, env))
    assert len(list((cwd / "sweep").glob("*/done"))) == 2
    listed = _ok(wab_installed(["sweep", "local_cluster", "--cluster", "local", "--dry-run"], cwd, env))
    assert "0 invalid" in listed  # a sweep named by its file in the installed configs
    _ok(wab_installed(["report", "sweep"], cwd, env))
    assert "papa" in (cwd / "sweep" / "report" / "summary.md").read_text()
    _ok(wab_installed(["demo", "--methods", "independent", "--epochs", "1", "--out", "demo"], cwd, env))
    assert (cwd / "demo" / "report" / "summary.md").exists()


PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=77"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "wab-halfmean-plugin"
        version = "0.3.1"

        [project.entry-points."wab.methods"]
        halfmean = "halfmean_plugin.halfmean:HalfMean"

        [tool.setuptools]
        packages = ["halfmean_plugin"]

        [tool.setuptools.package-data]
        halfmean_plugin = ["*.yaml"]
    """,
    "halfmean_plugin/__init__.py": "",
    "halfmean_plugin/halfmean.py": """
        from wab.method import Method

        class HalfMean(Method):
            '''Pulls every member ``pull`` of the way to the mean after each epoch.'''

            def after_epoch(self, run):
                run.population.lerp_toward_mean(float(self.cfg["pull"]))
    """,
    "halfmean_plugin/halfmean.yaml": """
        # @package _global_
        method:
          name: halfmean
          pull: 0.5
        optim:
          lr: 0.07
    """,
    "halfmean_plugin/nudge.py": """
        from wab.method import Method

        class Nudge(Method):
            '''Not registered anywhere: selected as method=halfmean_plugin.nudge:Nudge.'''

            hyperparameters = {"pull": 0.25}

            def after_epoch(self, run):
                run.population.lerp_toward_mean(float(self.cfg["pull"]))
    """,
}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """wab and the plugin package above, each built into a wheel and installed into one folder."""
    work = tmp_path_factory.mktemp("plugin")
    src = work / "plugin"
    for name, text in PLUGIN.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(textwrap.dedent(text).lstrip())
    site = work / "site"
    build_and_install(copy_of_wab(work / "src"), site, work)
    build_and_install(src, site, work)
    return site


def _plugin_sweep(cwd, env, cluster: str, resources: dict) -> dict[str, dict]:
    """The plugin's two settings, its unregistered class and the control, through ``cluster``."""
    spec = {"base": TINY, "out_dir": "sweep", "resources": resources,
            "variants": [{"method": ["halfmean"], "method.pull": [0.5, 0.3]},
                         {"method": ["halfmean_plugin.nudge:Nudge"]}, {"method": ["independent"]}]}  # fmt: skip
    (cwd / "grid.yaml").write_text(yaml.safe_dump(spec))
    _ok(wab_installed(["sweep", "grid.yaml", "--cluster", cluster], cwd, env))
    deadline = time.time() + 600
    while time.time() < deadline and len(list((cwd / "sweep").glob("*/done"))) < 4:
        time.sleep(1)
    finals = {p.parent.name: json.loads(p.read_text()) for p in (cwd / "sweep").glob("*/final.json")}
    assert sorted(f["status"] for f in finals.values()) == ["done"] * 4, wab_installed(["status", "sweep"], cwd, env)
    return finals


def _check_plugin_records(finals: dict[str, dict]) -> None:
    half = sorted((f for f in finals.values() if f["method"] == "halfmean"),
                  key=lambda f: f["config"]["method"]["pull"])  # fmt: skip
    assert [f["config"]["method"]["pull"] for f in half] == [0.3, 0.5]  # overridden without "+"
    assert all(f["config"]["optim"]["lr"] == 0.07 for f in half)  # the plugin's YAML sets an optimizer default
    source = half[0]["method_source"]
    assert {k: source[k] for k in ("class", "distribution", "version")} == {
        "class": "halfmean_plugin.halfmean:HalfMean", "distribution": "wab-halfmean-plugin", "version": "0.3.1"}
    assert len(source["source_sha256"]) == 64
    assert all(f["comm"]["ops"]["lerp_toward_mean"]["calls"] == 1 for f in half)
    (nudge,) = (f for f in finals.values() if f["method"] == "nudge")
    assert nudge["config"]["method"] == {"name": "nudge", "pull": 0.25, "_target_": "halfmean_plugin.nudge:Nudge"}
    assert nudge["comm"]["ops"]["lerp_toward_mean"]["calls"] == 1


def test_a_method_from_an_installed_package_runs_in_a_local_sweep_and_a_report(plugin_site, tmp_path):
    env, cwd = installed_env(plugin_site), tmp_path / "work"
    cwd.mkdir()
    _check_plugin_records(_plugin_sweep(cwd, env, "local", {"array_parallelism": 2}))
    _ok(wab_installed(["report", "sweep"], cwd, env))
    summary = (cwd / "sweep" / "report" / "summary.md").read_text()
    assert "halfmean" in summary and "nudge" in summary
    unknown = wab_installed(["train", "method=halfmaen", *TINY], cwd, env)
    assert unknown.returncode == 2 and "did you mean 'halfmean'" in unknown.stderr


@pytest.mark.slurm
@pytest.mark.skipif(shutil.which("sbatch") is None or subprocess.run(["sinfo", "-h"], capture_output=True).returncode,
                    reason="no SLURM cluster answers (scripts/slurm_cluster.sh start)")  # fmt: skip
def test_a_method_from_an_installed_package_runs_in_a_slurm_sweep(plugin_site, tmp_path):
    env, cwd = installed_env(plugin_site), tmp_path / "work"
    cwd.mkdir()
    resources = {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 15, "array_parallelism": 2}
    _check_plugin_records(_plugin_sweep(cwd, env, "slurm", resources))


def test_a_method_from_an_installed_package_gives_the_same_records_on_the_distributed_backend(plugin_site, tmp_path):
    env = {**installed_env(plugin_site), "OMP_NUM_THREADS": "1"}
    cwd = tmp_path / "work"
    cwd.mkdir()
    args = ["train", "method=halfmean", *TINY, "population.size=4", "trainer.epochs=2"]
    _ok(wab_installed([*args, "out_dir=local"], cwd, env))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-S", "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={port}", "-m", "wab.cli", *args, "population.backend=distributed", "out_dir=dist"]
    p = subprocess.run(torchrun, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (ref,) = [json.loads(f.read_text()) for f in (cwd / "local").glob("halfmean-*/final.json")]
    (got,) = [json.loads(f.read_text()) for f in (cwd / "dist").glob("halfmean-*/final.json")]
    assert got["run_id"] == ref["run_id"] and got["metrics"] == ref["metrics"]
    assert got["method_source"]["distribution"] == "wab-halfmean-plugin"
