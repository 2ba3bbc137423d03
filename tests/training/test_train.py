"""Training: each method learns digits; the CLI writes the run folder, resumes, reports divergence and bad options."""
import json
import os
import subprocess
import sys

import pytest
import torch

from training.train import Diverged, UsageError, partial_dir, run


@pytest.mark.parametrize("method,noise", [("plain", "paper"), ("nit", "paper"), ("ovf", "paper"), ("irs", "paper"),
                                          ("correctnet", "paper"), ("nit", "device"), ("nit_temp", "paper"),
                                          ("ovf_beta0", "paper"), ("ovf_frozen_bn", "paper"), ("nit_multi", "paper")])
def test_each_method_beats_chance_on_digits(tmp_path, fast_cfg, method, noise):
    cfg = fast_cfg.replace(method=method, noise=noise, epochs=3, eval_chips=5)
    res = run(cfg, tmp_path / "r", quiet=True)
    assert res["acc_mean"] > 0.6, res  # chance is 0.1
    assert res["clean_test_acc"] > 0.6


def _cli(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "training.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


FAST = ["--model", "mlp", "--dataset", "digits", "--batch-size", "64", "--lr", "0.005", "--eval-chips", "5",
        "--val-chips", "1", "--threads", "1", "--quiet"]


def test_cli_end_to_end_writes_run_folder(tmp_path):
    out = tmp_path / "run1"
    r = _cli([*FAST, "--method", "ovf", "--sigma", "0.1", "--epochs", "1", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    for f in ("config.json", "config.toml", "metrics.csv", "best.pt", "last.pt", "eval.json", "chips.csv", "acc_hist.png"):
        assert (out / f).is_file(), f
    ev = json.loads((out / "eval.json").read_text())
    assert ev["chips"] == 5 and 0 <= ev["acc_mean"] <= 1 and ev["method"] == "ovf"
    assert json.loads((out / "config.json").read_text())["sigma"] == 0.1
    assert not partial_dir(out).exists()


def test_resume_continues_the_same_run(tmp_path, fast_cfg):
    cfg = fast_cfg.replace(method="nit", epochs=2, eval_chips=3)
    straight = run(cfg, tmp_path / "a", quiet=True)
    again = run(cfg, tmp_path / "c", quiet=True)
    assert again["acc_mean"] == straight["acc_mean"]  # determinism across fresh runs
    # Interrupt the run after epoch 1's checkpoint (the second validation call raises).
    import training.train as tt

    calls = {"n": 0}
    orig = tt.clean_accuracy

    def stop_after_first_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(*a, **k)

    tt.clean_accuracy = stop_after_first_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, tmp_path / "d", quiet=True)
    finally:
        tt.clean_accuracy = orig
    # epoch 2 was trained but its checkpoint not written: resuming redoes epoch 2 from epoch 1's state
    assert (tmp_path / "d.partial" / "last.pt").exists() and not (tmp_path / "d").exists()
    with pytest.raises(UsageError, match="--resume"):
        run(cfg, tmp_path / "d", quiet=True)
    with pytest.raises(UsageError, match="different config"):
        run(cfg.replace(lr=2 * cfg.lr), tmp_path / "d", resume=True, quiet=True)
    # another data folder (the same data named elsewhere) resumes: it changes nothing computed
    resumed = run(cfg.replace(data_dir=str(tmp_path)), tmp_path / "d", resume=True, quiet=True)
    assert resumed["acc_mean"] == straight["acc_mean"]
    a = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["model"]
    d = torch.load(tmp_path / "d" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], d[k]) for k in a)


def test_cli_resume_flag(tmp_path):
    out = tmp_path / "r"
    work = partial_dir(out)
    r = _cli([*FAST, "--epochs", "1", "--out", str(out), "--resume"], tmp_path)  # nothing to resume: starts fresh
    assert r.returncode == 0, r.stderr and out.is_dir() and not work.exists()


def test_divergence_message_and_exit_code(tmp_path):
    out = tmp_path / "div"
    r = _cli([*FAST, "--optimizer", "sgd", "--lr", "1e30", "--epochs", "2", "--out", str(out)], tmp_path)
    assert r.returncode == 3
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "diverged" in lines[0] and "epoch 1 step" in lines[0], r.stderr
    assert (out / "diverged.json").is_file()


@pytest.mark.parametrize("args,msg", [(["--method", "magic"], "unknown method"),
                                      (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "--data-dir"),
                                      (["--noise", "device", "--device-model", "/nonexistent.json"], "no such device model"),
                                      (["--epochs", "x"], "invalid int"),
                                      (["--noise", "crossbar", "--crossbar-config", "/nonexistent.toml"], "no such config file")])
def test_bad_options_exit_2_one_line_no_folder(tmp_path, capsys, args, msg):
    from training.train import main

    out = tmp_path / "bad"
    try:
        rc = main([*FAST, *args, "--out", str(out)])
    except SystemExit as e:  # argparse errors
        rc = e.code
    assert rc == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and msg in lines[0], lines
    assert not out.exists() and not partial_dir(out).exists()


def test_run_raises_diverged_in_process(tmp_path, fast_cfg):
    with pytest.raises(Diverged) as e:
        run(fast_cfg.replace(optimizer="sgd", lr=1e30, epochs=1), tmp_path / "x", quiet=True)
    assert e.value.epoch == 1


def test_overwrite_replaces_a_finished_run_only(tmp_path):
    out = tmp_path / "run"
    args = [*FAST, "--method", "plain", "--epochs", "1", "--out", str(out)]
    assert _cli(args, tmp_path).returncode == 0
    again = _cli(args, tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert _cli([*args, "--overwrite", "--seed", "1"], tmp_path).returncode == 0
    assert '"seed": 1' in (out / "config.json").read_text()
    other = tmp_path / "notarun"
    other.mkdir()
    r = _cli([*FAST, "--epochs", "1", "--out", str(other), "--overwrite"], tmp_path)
    assert r.returncode == 2 and "not a run folder" in r.stderr
