"""No run is trained twice: the lease of a run directory, with real processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from wab.run.config import compose_config
from wab.run.lease import LEASE_DIR, Lease, RunLeased, read_lease
from wab.run.lifecycle import run, run_dir_for
from wab.run.records import RunDir

WAB = [sys.executable, "-m", "wab.cli"]
SLOW = ["data=digits", "model.width=8", "population.size=2", "trainer.epochs=6", "trainer.batch_size=16",
        "trainer.progress=false", "device=cpu"]  # fmt: skip


def _start(out, *extra):
    return subprocess.Popen([*WAB, "train", *SLOW, *extra, f"out_dir={out}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def _fake_lease(path, host, heartbeat, pid=1, job=None, gen=1):
    (path / LEASE_DIR).mkdir(parents=True, exist_ok=True)
    lease = {"token": "x", "host": host, "pid": pid, "job": job, "started": heartbeat, "heartbeat": heartbeat}
    (path / LEASE_DIR / f"{gen:08d}.json").write_text(json.dumps(lease))


@pytest.mark.slow
def test_a_second_trainer_on_a_leased_run_exits_at_once_and_nothing_is_written_twice(tmp_path):
    out = tmp_path / "runs"
    first = _start(out)
    rd = run_dir_for(compose_config([*SLOW, f"out_dir={out}"]))
    _wait_for(lambda: read_lease(rd.path) is not None)
    t0 = time.time()
    second = subprocess.run([*WAB, "train", *SLOW, f"out_dir={out}"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and time.time() - t0 < 30
    assert "is being trained by pid" in second.stderr and "not starting a second copy" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    epochs = [r["epoch"] for r in rd.read_metrics()]
    assert epochs == [1, 2, 3, 4, 5, 6]  # one trainer wrote every line, once
    assert rd.log.read_text().count("starts (wab") == 1
    assert read_lease(rd.path) is None  # released at the end


@pytest.mark.slow
def test_a_killed_holder_is_taken_over_at_once_and_the_run_resumes_to_the_same_result(tmp_path):
    reference = run(compose_config([*SLOW, f"out_dir={tmp_path / 'reference'}"]))
    out = tmp_path / "runs"
    first = _start(out)
    rd = run_dir_for(compose_config([*SLOW, f"out_dir={out}"]))
    _wait_for(lambda: rd.checkpoint.exists() and len(rd.read_metrics()) >= 2)
    os.kill(first.pid, signal.SIGKILL)  # no warning: the lease stays behind, its holder is gone
    first.wait()
    assert read_lease(rd.path) is not None and not read_lease(rd.path).is_live()
    second = subprocess.run([*WAB, "train", *SLOW, f"out_dir={out}"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resumed from" in rd.log.read_text()
    final = json.loads(rd.final.read_text())
    assert final["metrics"] == reference["metrics"] and final["steps"] == reference["steps"]
    assert [r["epoch"] for r in rd.read_metrics()] == [1, 2, 3, 4, 5, 6]


def test_a_lease_held_elsewhere_is_live_until_its_heartbeat_times_out(tmp_path, monkeypatch):
    monkeypatch.setenv("WAB_LEASE_TIMEOUT_S", "60")
    _fake_lease(tmp_path, "another-node", time.time() - 10)
    with pytest.raises(RunLeased, match="pid 1 on another-node"):
        Lease(tmp_path).acquire()
    _fake_lease(tmp_path, "another-node", time.time() - 61)  # its holder stopped beating a minute ago
    lease = Lease(tmp_path).acquire()
    try:
        assert lease.gen == 2 and lease.held() and read_lease(tmp_path).token == lease.token
        assert not (tmp_path / LEASE_DIR / "00000001.json").exists()
    finally:
        lease.release()
    assert read_lease(tmp_path) is None


def test_a_requeued_slurm_job_takes_over_its_own_earlier_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    _fake_lease(tmp_path, "another-node", time.time(), job="41_3")  # fresh, but from this job's last life
    assert not read_lease(tmp_path).is_live()
    _fake_lease(tmp_path, "another-node", time.time(), job="41_4")
    assert read_lease(tmp_path).is_live()


def test_a_holder_that_was_taken_over_notices_and_writes_nothing(tiny, monkeypatch):
    monkeypatch.setenv("WAB_LEASE_TIMEOUT_S", "0.3")
    cfg = tiny("trainer.epochs=30", "trainer.batch_size=32")
    rd = run_dir_for(cfg)
    rd.path.mkdir(parents=True)
    lease = Lease(rd.path).acquire()
    _fake_lease(rd.path, "another-node", time.time(), gen=lease.gen + 1)  # someone took it over
    _wait_for(lambda: lease.lost, timeout=10)
    lease.release()
    from wab.run.loop import Trainer

    trainer = Trainer(cfg, rd)
    from wab.run.lease import LeaseLost

    with pytest.raises(LeaseLost, match="taken over"):
        trainer.fit(lease)
    assert not rd.final.exists() and not rd.checkpoint.exists()
    assert RunDir(rd.path).state() == "incomplete"
