"""Worker processes die with their driver (issue #15): ``kill -9`` of a sweep must not leave workers
training on (one was ~590 MB) that a rerun then races in the same run folder; and a cell whose
folder another process is still writing becomes a ``failed`` row saying so, the folder untouched."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.sweep import main

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")

LONG = ["--model", "mlp", "--dataset", "digits", "--sigmas", "0.1", "--epochs", "5000", "--batch-size", "64",
        "--lr", "0.005", "--eval-chips", "2", "--val-chips", "1", "--threads", "1", "--quiet"]


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` and whose command line is a multiprocessing spawned worker."""
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmd:
            kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaps, as under some container inits, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_kill_9_of_the_driver_takes_its_workers_along(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "training.sweep", *LONG, "--methods", "plain", "--seeds", "2", "--out", str(out),
           "--workers", "2"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:  # both cells training, in two workers
            if len(list((out / "runs").glob("*.partial/config.json"))) == 2 if (out / "runs").exists() else False:
                workers = _children(driver.pid)
                if len(workers) == 2:
                    break
            time.sleep(0.1)
        assert driver.poll() is None, driver.stderr.read().decode()
        assert len(workers) == 2, workers
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        left = [w for w in workers if _alive(w)]
        assert not left, f"worker(s) {left} outlived their driver"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for w in workers:  # the processes this test started, should the assertion above fail
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        driver.stderr.close()


TINY = ["--model", "mlp", "--dataset", "digits", "--sigmas", "0.1", "--epochs", "1", "--batch-size", "64",
        "--lr", "0.005", "--train-limit", "256", "--test-limit", "128", "--eval-chips", "2", "--val-chips", "1",
        "--threads", "1", "--quiet", "--workers", "0"]


def test_cell_whose_folder_another_process_writes_is_a_failed_row(tmp_path, capsys):
    """A surviving writer holds the folder's lock: the cell fails with a row saying so, and the
    folder (here with a checkpoint cut short, which a cell otherwise clears away) is not touched."""
    from training.runfolder import RunLock

    out = tmp_path / "sw"
    part = out / "runs" / "plain_sigma0.1000_seed0.partial"
    part.mkdir(parents=True)
    (part / "last.pt").write_bytes(b"PK\x03\x04 being written")
    with RunLock(part):
        assert main(TINY + ["--methods", "plain", "--seeds", "1", "--out", str(out)]) == 1
        assert (part / "last.pt").read_bytes() == b"PK\x03\x04 being written"
    with open(out / "results.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "failed" and "another process" in row["error"] and "\n" not in row["error"]
    assert "1 of 1 cell(s) failed" in capsys.readouterr().err
    # once the writer is gone, --retry-failed runs the cell (the cut checkpoint is cleared away)
    assert main(TINY + ["--methods", "plain", "--seeds", "1", "--out", str(out), "--retry-failed"]) == 0
    assert not part.exists() and (out / "runs" / "plain_sigma0.1000_seed0" / "eval.json").is_file()


def test_second_sweep_into_the_same_out_is_refused(tmp_path, capsys):
    from training.runfolder import RunLock

    out = tmp_path / "sw"
    out.mkdir()
    with RunLock(out):  # as a running sweep holds it
        assert main(TINY + ["--methods", "plain", "--seeds", "1", "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--out" in err[0] and "another sweep" in err[0]
    assert not (out / "runs").exists() and not (out / "results.csv").exists()


WATCHDOG_DRIVER = """
import multiprocessing as mp, os, sys, time
from training.engines import die_with_parent

def child(parent, marker):
    die_with_parent(parent, death_signal=False, poll_s=0.2)  # the watchdog thread alone
    open(marker, "w").close()
    time.sleep(120)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=child, args=(os.getpid(), sys.argv[1]))
    p.start()
    time.sleep(3)  # the child is up, its watchdog running
    print(p.pid, flush=True)
    os._exit(0)  # the driver dies without stopping its child
"""


def test_watchdog_alone_ends_a_worker_whose_driver_died(tmp_path):
    """Where no death signal can be armed (another OS, a pool made off the main thread)."""
    script = tmp_path / "driver.py"
    script.write_text(WATCHDOG_DRIVER)
    marker = tmp_path / "child-up"
    with open(tmp_path / "pid", "w") as out, open(tmp_path / "err", "w") as err:  # files, not pipes that a
        subprocess.run([sys.executable, str(script), str(marker)], stdout=out, stderr=err,  # surviving child holds
                       timeout=120, cwd=Path(__file__).resolve().parents[2])
    child = int((tmp_path / "pid").read_text().split()[0])
    try:
        assert marker.exists(), (tmp_path / "err").read_text()  # the child was up, its watchdog armed
        deadline = time.time() + 5
        while time.time() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
