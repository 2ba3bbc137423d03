"""Run folders and CLIs under bad input and faults: nothing deleted that a run did not write, one
second writer refused, one line and exit 2 instead of a traceback (issue #15, items 1, 5, 8, 11, 12, 15)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.run_config import ConfigError, RunConfig
from training.runfolder import MARKER, RunFolderError, RunLock, check_output_dir, check_output_file, locked_by_other
from training.train import UsageError, partial_dir, run

FAST = ["--model", "mlp", "--dataset", "digits", "--batch-size", "64", "--lr", "0.005", "--eval-chips", "2",
        "--val-chips", "1", "--threads", "1", "--quiet", "--epochs", "1"]


def _cli(module, args, cwd, timeout=120):
    """Run ``python -m module args`` in this process (a traceback fails the test); (returncode, stderr)."""
    import contextlib
    import importlib
    import io

    err = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err):
            try:
                rc = importlib.import_module(module).main(list(args))
            except SystemExit as e:  # argparse
                rc = e.code
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(args, rc, "", err.getvalue())


def _subprocess_cli(module, args, cwd, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(r):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    r = _cli("training.train", [*FAST, "--out", str(out)], out.parent)
    assert r.returncode == 0, r.stderr
    return out


def test_overwrite_never_deletes_a_folder_a_run_did_not_write(tmp_path):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "config.json").write_text("{}")
    (proj / "src" / "keep.txt").write_text("x")
    err = _one_line_error(_cli("training.train", [*FAST, "--out", str(proj), "--overwrite"], tmp_path))
    assert MARKER in err
    assert (proj / "src" / "keep.txt").read_text() == "x" and not partial_dir(proj).exists()


def test_overwrite_refuses_a_run_folder_holding_a_users_file(tmp_path, finished_run):
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "notes.txt").write_text("mine")
    err = _one_line_error(_cli("training.train", [*FAST, "--out", str(run_dir), "--overwrite"], tmp_path))
    assert "notes.txt" in err and (run_dir / "notes.txt").read_text() == "mine"
    (run_dir / "notes.txt").unlink()
    old_eval = (run_dir / "eval.json").read_text()
    r = _cli("training.train", [*FAST, "--out", str(run_dir), "--overwrite", "--seed", "3"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "eval.json").read_text())["seed"] == 3 != json.loads(old_eval)["seed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # the old run moved aside, then removed


def test_finished_run_has_its_marker_and_no_lock(finished_run):
    assert (finished_run / MARKER).is_file() and not (finished_run / ".lock").exists()


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_unusable_out_is_one_line_before_any_work(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "run", "proc": Path("/proc/cimsim-nope/run")}[where]
    err = _one_line_error(_cli("training.train", [*FAST, "--out", str(out)], tmp_path))
    assert "--out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_second_writer_of_a_run_folder_is_refused(tmp_path, fast_cfg):
    out = tmp_path / "r"
    work = partial_dir(out)
    work.mkdir()
    with RunLock(work):
        assert locked_by_other(work)
        with pytest.raises(UsageError, match="another process"):
            run(fast_cfg, out, resume=True, quiet=True)
    assert not locked_by_other(work)


def test_resume_is_refused_while_another_process_trains_into_the_folder(tmp_path):
    out = tmp_path / "r"
    slow = ["--model", "mlp", "--dataset", "digits", "--epochs", "200", "--eval-chips", "2", "--val-chips", "1",
            "--threads", "1", "--quiet", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "training.train", *slow], cwd=tmp_path, env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (partial_dir(out) / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.2)
        assert (partial_dir(out) / "last.pt").exists(), "first run made no checkpoint"
        err = _one_line_error(_subprocess_cli("training.train", [*slow, "--resume"], tmp_path))
        assert "another process" in err and f"pid {first.pid}" in err
        first.kill()
        first.wait()
        assert not locked_by_other(partial_dir(out))  # the kernel dropped the lock of the killed run
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_a_checkpoint"])
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path, fast_cfg, damage):
    out = tmp_path / "r"
    work = partial_dir(out)
    work.mkdir()
    fast_cfg.save(work)
    ck = work / "last.pt"
    if damage == "truncated":
        torch.save({"config": fast_cfg.to_dict(), "model": {}, "epoch": 0, "x": torch.zeros(1000)}, ck)
        ck.write_bytes(ck.read_bytes()[:200])
    elif damage == "empty":
        ck.write_bytes(b"")
    else:
        torch.save([1, 2, 3], ck)
    with pytest.raises(UsageError, match=r"last\.pt"):
        run(fast_cfg, out, resume=True, quiet=True)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "other_model"])
def test_evaluate_on_a_damaged_run_names_the_file(tmp_path, finished_run, damage):
    import shutil

    run_dir = tmp_path / "r"
    shutil.copytree(finished_run, run_dir)
    best = run_dir / "best.pt"
    if damage == "truncated":
        best.write_bytes(best.read_bytes()[:300])
    elif damage == "empty":
        best.write_bytes(b"")
    elif damage == "random":
        best.write_bytes(os.urandom(4000))
    else:
        cfg = json.loads((run_dir / "config.json").read_text())
        (run_dir / "config.json").write_text(json.dumps({**cfg, "model": "lenet"}))
    err = _one_line_error(_cli("training.evaluate", ["--run", str(run_dir), "--chips", "2"], tmp_path))
    assert str(best) in err


@pytest.mark.parametrize("sigma", ["-1", "nan", "inf"])
def test_evaluate_validates_sigma_as_train_does(tmp_path, finished_run, sigma):
    err = _one_line_error(_cli("training.evaluate", ["--run", str(finished_run), "--chips", "2", f"--sigma={sigma}"], tmp_path))
    assert "--sigma" in err


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_evaluate_checks_its_out_before_the_work(tmp_path, finished_run, where):
    (tmp_path / "afile").write_text("x")
    out = tmp_path if where == "folder" else tmp_path / "afile" / "m.json"
    t0 = time.time()
    err = _one_line_error(_cli("training.evaluate", ["--run", str(finished_run), "--chips", "500", "--out", str(out)], tmp_path))
    assert "--out" in err and time.time() - t0 < 60


def test_evaluate_writes_its_out_file_whole(tmp_path, finished_run):
    out = tmp_path / "new" / "m.json"
    r = _cli("training.evaluate", ["--run", str(finished_run), "--chips", "2", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["chips"] == 2 and sorted(p.name for p in out.parent.iterdir()) == ["m.json"]


@pytest.mark.parametrize("text,field", [('{"seed": -1}', "seed"), ('{"sigma": "a"}', "sigma"), ('[1]', "table"),
                                        ('{"epochs": 1.5}', "epochs"), ('{"keep_first": 1}', "keep_first")])
def test_config_files_name_the_bad_field(tmp_path, text, field):
    p = tmp_path / "c.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=field) as e:
        RunConfig.load(p)
    assert str(p) in str(e.value)
    err = _one_line_error(_cli("training.train", ["--config", str(p), "--out", str(tmp_path / "o")], tmp_path))
    assert field in err and not (tmp_path / "o").exists()


def test_seed_option_is_named(tmp_path):
    err = _one_line_error(_cli("training.train", [*FAST, "--seed", "-1", "--out", str(tmp_path / "o")], tmp_path))
    assert "seed" in err


def test_output_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(RunFolderError, match="is a directory"):
        check_output_file(tmp_path)
    check_output_dir(tmp_path / "a" / "b")  # missing parents are created later, by the command
    check_output_file(tmp_path / "a" / "b.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # the checks leave nothing behind


@pytest.mark.parametrize("args,words", [(["--methods", "plain,foo"], "--methods"), (["--noises", "x"], "--noises"),
                                        (["--steps", "-1"], "--steps"), (["--vgg-reps", "0"], "--vgg-reps"),
                                        (["--device", "tpu"], "--device")])
def test_training_bench_options_are_checked_first(tmp_path, args, words):
    err = _one_line_error(_cli("training.bench_training", args, tmp_path))
    assert words in err
