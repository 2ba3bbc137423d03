"""Write-verify budgets of trained models: training.programming and the CLI
(``python -m training.writeverify_budget``)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cimsim.crossbar.config import CrossbarConfig
from cimsim.device.model import load_device
from cimsim.seeds import layer_seed
from training.run_config import RunConfig
from training.programming import (
    Policy,
    ProgrammingError,
    ProgrammingSetup,
    cell_mask,
    ideal_weights,
    prepare_layers,
    program_layer,
    selection_masks,
)
from training.train import run
from training.writeverify_budget import NOT_REACHED, main

# rram1 (the NeFT stylized RRAM, 4 levels on 0..40 uS) at sigma_scale 1: one-shot programming
# ruins the MLP, write-verify restores it, so the budget has something to decide.
SIGMA = "1.0"


def _read(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny trained runs (MLP on scikit-learn digits, 2 epochs): plain and nit."""
    base = tmp_path_factory.mktemp("wv_runs")
    cfg = RunConfig(model="mlp", dataset="digits", epochs=2, batch_size=64, lr=5e-3, eval_chips=2, val_chips=1,
                    eval_batch_size=512, sigma=0.1, threads=1, seed=0)
    out = {}
    for method in ("plain", "nit"):
        run(cfg.replace(method=method), base / method, quiet=True)
        out[method] = base / method
    return out


@pytest.fixture(scope="module")
def cli(runs, tmp_path_factory):
    """One CLI run through ``python -m training.writeverify_budget`` over both runs; returns (out, process)."""
    out = tmp_path_factory.mktemp("wv_out") / "res"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "training.writeverify_budget", "--run", str(runs["plain"]), "--run", str(runs["nit"]),
            "--policies", "none,full,selective", "--tolerances", "2", "--fractions", "0.1,1", "--chips", "2",
            "--sigma", SIGMA, "--sensitivity", "second", "--out", str(out)]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _rows_by(rows, run_dir):
    return [r for r in rows if r["run"] == str(run_dir)]


def _find(rows, policy, fraction=None):
    hits = [r for r in rows if r["policy"] == policy and (fraction is None or float(r["fraction"]) == fraction)]
    assert len(hits) == 1, (policy, fraction, hits)
    return hits[0]


# ------------------------------------------------------------------------------ CLI
def test_cli_writes_table_plots_budget_and_config(cli, runs):
    out, proc = cli
    for f in ("writeverify.csv", "layers.csv", "budget.csv", "acc_vs_energy.png", "acc_vs_latency.png", "config.json"):
        assert (out / f).is_file(), f
    assert (out / "acc_vs_energy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _read(out / "writeverify.csv")
    assert len(rows) == 2 * 4  # none, full tol 2, selective 10 %, selective 100 %
    for key in ("run", "method", "policy", "tolerance", "fraction", "chips", "acc_mean", "acc_std", "acc_ci95_low",
                "acc_ci95_high", "energy_J", "latency_s", "pulses", "reads", "failed_cells"):
        assert key in rows[0]
    assert {r["method"] for r in rows} == {"plain", "nit"}
    assert all(int(r["chips"]) == 2 for r in rows)
    # per-layer costs add up to the model's
    layers = _read(out / "layers.csv")
    for r in rows:
        mine = [la for la in layers if la["run"] == r["run"] and la["policy"] == r["policy"]
                and la["fraction"] == r["fraction"] and la["tolerance"] == r["tolerance"]]
        assert len(mine) == 4  # the MLP's four linear layers
        assert sum(float(la["energy_J"]) for la in mine) == pytest.approx(float(r["energy_J"]), rel=1e-9)
        assert sum(float(la["latency_s"]) for la in mine) == pytest.approx(float(r["latency_s"]), rel=1e-9)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["algorithm"] == "ispp" and cfg["chips"] == 2 and cfg["crossbar"]["weight_bits"] == 8
    assert set(cfg["runs"]) == {str(runs["plain"]), str(runs["nit"])}
    assert "min energy J" in proc.stdout  # the budget table is printed
    assert "chips" in proc.stderr  # progress lines


def test_selective_fraction_one_equals_full(cli, runs):
    rows = _read(cli[0] / "writeverify.csv")
    for run_dir in runs.values():
        mine = _rows_by(rows, run_dir)
        full, sel = _find(mine, "full"), _find(mine, "selective", 1.0)
        for k in ("acc_mean", "acc_std", "energy_J", "latency_s", "pulses", "reads", "failed_cells"):
            assert full[k] == sel[k], k


def test_energy_full_above_selective_above_none(cli, runs):
    rows = _read(cli[0] / "writeverify.csv")
    for run_dir in runs.values():
        mine = _rows_by(rows, run_dir)
        e_full, e_sel, e_none = (float(_find(mine, p, f)["energy_J"]) for p, f in
                                 (("full", None), ("selective", 0.1), ("none", None)))
        assert e_full > e_sel > e_none >= 0
        l_full, l_sel = float(_find(mine, "full")["latency_s"]), float(_find(mine, "selective", 0.1)["latency_s"])
        assert l_full > l_sel
        # one-shot programming at this spread is far worse than write-verify
        assert float(_find(mine, "none")["acc_mean"]) < float(_find(mine, "full")["acc_mean"]) - 0.3


def test_budget_picks_cheapest_setting_reaching_target(cli, runs):
    rows = _read(cli[0] / "writeverify.csv")
    budget = _read(cli[0] / "budget.csv")
    assert len(budget) == 2
    for b in budget:
        mine = [r for r in rows if r["run"] == b["run"]]
        target = float(b["clean_acc"]) - 0.01  # default: 1 point below the clean accuracy
        assert float(b["target_acc"]) == pytest.approx(target)
        assert float(b["acc_none"]) == float(_find(mine, "none")["acc_mean"])
        ok = [r for r in mine if float(r["acc_mean"]) >= target]
        assert ok, "write-verify at 2 uS should reach the target"
        assert float(b["min_energy_J"]) == min(float(r["energy_J"]) for r in ok)
        assert float(b["min_latency_s"]) == min(float(r["latency_s"]) for r in ok)
        assert float(b["energy_acc"]) >= target and b["energy_policy"] in ("full", "selective")


def test_budget_not_reached(runs, tmp_path, capsys):
    out = tmp_path / "nr"
    rc = main(["--run", str(runs["plain"]), "--policies", "none", "--chips", "1", "--sigma", SIGMA,
               "--target-acc", "1.0", "--quiet", "--out", str(out)])
    assert rc == 0
    b = _read(out / "budget.csv")[0]
    assert b["min_energy_J"] == NOT_REACHED and b["min_latency_s"] == NOT_REACHED and b["energy_policy"] == ""
    assert NOT_REACHED in capsys.readouterr().out


def test_tiny_tolerance_gives_quantized_accuracy(runs, tmp_path):
    out = tmp_path / "tiny"
    rc = main(["--run", str(runs["plain"]), "--policies", "full", "--tolerances", "0.02", "--max-pulses", "none",
               "--chips", "1", "--sigma", SIGMA, "--quiet", "--out", str(out)])
    assert rc == 0
    row = _read(out / "writeverify.csv")[0]
    b = _read(out / "budget.csv")[0]
    assert float(row["failed_cells"]) == 0
    assert abs(float(row["acc_mean"]) - float(b["quant_acc"])) <= 0.01


@pytest.fixture
def bad_runs(runs, tmp_path):
    """A folder without best.pt and one whose best.pt is not a checkpoint."""
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    shutil.copy(runs["plain"] / "config.json", no_ckpt / "config.json")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(runs["plain"] / "config.json", corrupt / "config.json")
    (corrupt / "best.pt").write_bytes(b"not a checkpoint")
    return {"no_ckpt": no_ckpt, "corrupt": corrupt}


def _rc(argv):
    """Exit code of the CLI called in-process (argparse errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("case", [
    ["--run", "{missing}"],
    ["--run", "{no_ckpt}"],
    ["--run", "{plain}", "--run", "{corrupt}"],  # fails only after the first run was evaluated
    ["--run", "{plain}", "--policies", "none,sometimes"],
    ["--run", "{plain}", "--fractions", "0"],
    ["--run", "{plain}", "--fractions", "0.1,1.5"],
    ["--run", "{plain}", "--tolerances", "-1"],
    ["--run", "{plain}", "--tolerances", "abc"],
    ["--run", "{plain}", "--tolerances", "0.05,1.5", "--relative"],
    ["--run", "{plain}", "--sensitivity", "third"],
    ["--run", "{plain}", "--algorithm", "magic"],
    ["--run", "{plain}", "--device-model", "no_such_device"],
    ["--run", "{plain}", "--target-acc", "95"],
    ["--run", "{plain}", "--max-pulses", "0"],
    ["--run", "{plain}", "--bn-recal-images", "-1"],
])
def test_bad_input_exits_2_without_output(case, runs, bad_runs, tmp_path, capsys):
    paths = {"missing": tmp_path / "nope", "plain": runs["plain"], **bad_runs}
    out = tmp_path / "out"
    args = [a.format(**{k: str(v) for k, v in paths.items()}) for a in case]
    if "--policies" not in args:
        args += ["--policies", "none"]
    assert _rc([*args, "--chips", "1", "--sigma", SIGMA, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_import_does_not_load_training_or_torch():
    code = ("import sys, cimsim.writeverify; "
            "print('torch' in sys.modules, any(m.split('.')[0] == 'training' for m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------- programming
def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def test_cell_mask_selects_all_cells_of_the_chosen_weights():
    setup = ProgrammingSetup(device_model=load_device("rram1"))
    layer = prepare_layers(_tiny_model(), setup)[0]
    wm = np.zeros(layer.shape, bool)
    wm[2, 4] = True  # weight (out 2, in 4)
    cm = cell_mask(wm, layer)
    assert cm.shape == layer.targets_S.shape  # (2, S, in, out)
    assert cm.sum() == 2 * CrossbarConfig().n_slices and cm[:, :, 4, 2].all()


def test_selection_masks_global_and_per_layer():
    sens = {"a": np.arange(10.0).reshape(2, 5), "b": 100 + np.arange(10.0)}
    g = selection_masks(sens, 0.5, "global")
    assert g["b"].all() and not g["a"].any()  # the 10 most sensitive of 20 are all in b
    per = selection_masks(sens, 0.5, "layer")
    assert per["a"].sum() == 5 and per["b"].sum() == 5 and per["a"][1].all()


def test_full_write_verify_on_a_noiseless_cell_gives_quantized_weights():
    setup = ProgrammingSetup(device_model=load_device("rram1").replace(sigma_scale=0.0), max_pulses=None)
    layers = prepare_layers(_tiny_model(), setup)
    ideal = ideal_weights(layers, setup)
    for k, la in enumerate(layers):
        w, cost = program_layer(la, setup, Policy("full", 1e-9), None, layer_seed(123, k))
        # each cell within 1 nS of its target: weight error <= scale * sum_k 4^k * 2 nS / step
        step = float(np.diff(setup.levels_S)[0])
        bound = float(la.mapped.scale.max()) * sum(4**s for s in range(4)) * 2e-9 / step
        assert np.abs(w - ideal[la.name]).max() <= bound + 1e-12
        assert cost.energy_J > 0 and cost.latency_s > 0 and cost.breakdown["failed"] == 0


@pytest.mark.parametrize("rows_parallel", [1, 3])
def test_costs_add_exactly_over_row_blocks(rows_parallel):
    """The premise of programming a large layer in parts: energy, counts and latency of the whole
    layer equal the sums over :func:`row_blocks` (each a multiple of ``rows_parallel`` rows)."""
    from types import SimpleNamespace

    from cimsim.cost import CostConfig
    from training.programming import layer_cost, row_blocks

    rng = np.random.default_rng(5)
    shape = (2, 4, 23, 7)  # (2, S, in, out)
    arrays = {k: rng.integers(0, 9, shape) for k in ("pulses_set", "pulses_reset", "reads")}
    arrays.update({k: rng.uniform(0, 1e-5, shape) for k in ("v2g_set_V2S", "v2g_reset_V2S", "g_read_sum_S")})
    arrays.update(failed=rng.random(shape) < 0.1, verified=rng.random(shape) < 0.9)
    setup = ProgrammingSetup(device_model=load_device("rram1"),
                             cost=CostConfig(rows_parallel=rows_parallel, drivers_per_row=3, p_static_W=1e-3))
    blocks = row_blocks(shape, rows_parallel, max_cells=2 * 4 * 7 * 5)
    assert len(blocks) > 2 and all((b.stop - b.start) % rows_parallel == 0 for b in blocks[:-1])
    assert np.array_equal(np.concatenate([np.arange(23)[b] for b in blocks]), np.arange(23))
    whole = layer_cost(SimpleNamespace(**arrays), setup)
    parts = sum(layer_cost(SimpleNamespace(**{k: v[:, :, b] for k, v in arrays.items()}), setup) for b in blocks)
    assert parts.latency_s == pytest.approx(whole.latency_s, rel=1e-12)
    assert parts.energy_J == pytest.approx(whole.energy_J, rel=1e-12)
    for k, v in whole.breakdown.items():
        assert parts.breakdown[k] == pytest.approx(v, rel=1e-12), k
    assert row_blocks(shape, rows_parallel, max_cells=2 * 4 * 23 * 7) == [slice(0, 23)]


def test_a_layer_too_large_for_one_call_is_programmed_in_row_blocks(monkeypatch):
    """Above PROGRAM_BLOCK_CELLS a layer is write-verified in row blocks, each from its own seed:
    every cell is programmed once, the chip is still its seed, and noiseless cells land on target."""
    import training.programming as prog

    calls = []
    real = prog.write_verify

    def counting(targets, *a, **kw):
        calls.append((targets.shape, kw["rng"]))
        return real(targets, *a, **kw)

    monkeypatch.setattr(prog, "write_verify", counting)
    monkeypatch.setattr(prog, "PROGRAM_BLOCK_CELLS", 2 * 4 * 5 * 2)  # two input rows of the 6 -> 5 layer
    noiseless = ProgrammingSetup(device_model=load_device("rram1").replace(sigma_scale=0.0), max_pulses=None)
    la = prepare_layers(_tiny_model(), noiseless)[0]  # targets (2, 4, 6, 5)
    w, cost = program_layer(la, noiseless, Policy("full", 1e-9), None, layer_seed(123, 0))
    assert [s for s, _ in calls] == [(2, 4, 2, 5)] * 3 and len({r for _, r in calls}) == 3
    assert cost.breakdown["cells"] == la.targets_S.size and cost.breakdown["failed"] == 0
    step = float(np.diff(noiseless.levels_S)[0])
    bound = float(la.mapped.scale.max()) * sum(4**s for s in range(4)) * 2e-9 / step
    assert np.abs(w - ideal_weights([la], noiseless)[la.name]).max() <= bound + 1e-12
    noisy = ProgrammingSetup(device_model=load_device("rram1"))
    a = program_layer(la, noisy, Policy("none"), None, 7)
    b = program_layer(la, noisy, Policy("none"), None, 7)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]  # a chip is its seed
    monkeypatch.setattr(prog, "PROGRAM_BLOCK_CELLS", la.targets_S.size)  # whole: the layer seed itself
    calls.clear()
    program_layer(la, noisy, Policy("none"), None, 7)
    assert calls == [((2, 4, 6, 5), 7)]


def test_policy_validation():
    with pytest.raises(ProgrammingError):
        Policy("selective", 1e-6, 0.0, "second")
    with pytest.raises(ProgrammingError):
        Policy("full", -1.0)
    with pytest.raises(ProgrammingError):
        Policy("sometimes")
    assert Policy("selective", 1e-6, 0.1, "first").label() == "selective(first, 10 %) tol 1 uS"


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_unusable_out_is_one_line_before_the_work(where, runs, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "wv", "proc": "/proc/cimsim-nope/wv"}[where]
    assert _rc(["--run", str(runs["plain"]), "--policies", "none", "--chips", "1", "--sigma", SIGMA, "--quiet",
                "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("text", ["[1, 2]", "{", '{"t_pulse_s": "x"}', '{"adc_energy_pJ": [["a", 1]]}'])
def test_bad_cost_config_is_one_line_naming_the_file(text, runs, tmp_path, capsys):
    cc = tmp_path / "cost.json"
    cc.write_text(text)
    assert _rc(["--run", str(runs["plain"]), "--policies", "none", "--chips", "1", "--sigma", SIGMA, "--quiet",
                "--cost-config", str(cc), "--out", str(tmp_path / "wv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(cc) in err, err
    assert not (tmp_path / "wv").exists()
