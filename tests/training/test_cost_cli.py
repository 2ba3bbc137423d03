"""``python -m training.cost``: energy, latency and area per inference of a trained run, beside its accuracy."""
from __future__ import annotations

import csv
import json

import pytest

from cimsim.cost import ChipCostConfig
from training.cost import main
from training.run_config import RunConfig
from training.train import run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (MLP on scikit-learn digits, 1 epoch)."""
    d = tmp_path_factory.mktemp("cost_run") / "mlp"
    run(RunConfig(model="mlp", dataset="digits", epochs=1, batch_size=64, lr=5e-3, eval_chips=1, val_chips=1,
                  eval_batch_size=256, sigma=0.1, threads=1, seed=0), d, quiet=True)
    return d


def test_cli_writes_table_csv_json_and_configs(run_dir, tmp_path, capsys):
    out = tmp_path / "c8"
    assert main(["--run", str(run_dir), "--images", "40", "--out", str(out), "--set", "adc_bits=8",
                 "--write-verify-tol-uS", "2", "--amortise", "1000"]) == 0
    cap = capsys.readouterr()
    assert "per inference:" in cap.out
    assert "cost: chip batches, write-verify: 2/2 (100 %)" in cap.err  # one test batch, then write-verify
    res = json.loads((out / "cost.json").read_text())
    assert res["images_per_chip"] == 40 and 0 <= res["accuracy"] <= 1
    s = res["summary"]
    assert s["energy_J"] > 0 and s["latency_s"] > 0 and s["area_mm2"] > 0 and s["tops_per_W"] > 0
    rows = list(csv.DictReader((out / "cost.csv").open()))
    assert rows[-1]["layer"] == "total"
    assert float(rows[-1]["energy_J"]) == pytest.approx(s["energy_J"], rel=1e-9)
    assert ChipCostConfig.load(out / "chip_cost_config.toml") == ChipCostConfig()
    assert json.loads((out / "eval_overrides.json").read_text())["adc_bits"] == 8
    assert (out / "cost.txt").read_text().startswith("layer")
    wv = res["write_verify"]
    assert wv["energy_J"] > 0 and wv["energy_per_inference_J"] == pytest.approx(wv["energy_J"] / 1000, rel=1e-12)
    # fewer ADC bits: less ADC energy on the same chip and images
    out4 = tmp_path / "c4"
    assert main(["--run", str(run_dir), "--images", "40", "--out", str(out4), "--set", "adc_bits=4", "--quiet"]) == 0
    res4 = json.loads((out4 / "cost.json").read_text())
    e_adc = lambda r: r["layers"][-1]["e_adc_J"]  # noqa: E731
    assert e_adc(res4) < e_adc(res)


@pytest.mark.parametrize("args, match", [
    (["--images", "0"], "--images"),
    (["--technology", "isaac7"], "unknown technology 'isaac7'"),
    (["--columns-per-adc", "0"], "--columns-per-adc"),
    (["--amortise", "0"], "--amortise"),
    (["--pareto", "--tiles", "64,x"], "--tiles must be a comma list"),
    (["--pareto", "--dacs", "multibit,pwm"], "--dacs must list"),
    (["--write-verify-tol-uS", "nan"], "--write-verify-tol-uS"),
    (["--set", "adc_bits=12"], "prices ADCs of 4-10 bits, not 12"),
    (["--set", "epochs=3"], "evaluation cannot change"),
    (["--chip-config", "missing.toml"], "missing.toml: no such chip cost config"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(args, match, run_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["--run", str(run_dir), "--images", "8", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert not out.exists()


def test_not_a_run_folder(tmp_path, capsys):
    assert main(["--run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a finished training run folder" in capsys.readouterr().err


def test_pareto_one_axis_at_a_time(run_dir, tmp_path, capsys):
    from training.cost import PARETO_AXES, pareto_front

    out = tmp_path / "p"
    assert main(["--run", str(run_dir), "--images", "16", "--pareto", "--out", str(out), "--quiet",
                 "--write-verify-tol-uS", "2"]) == 0
    small = tmp_path / "small"
    capsys.readouterr()
    assert main(["--run", str(run_dir), "--images", "8", "--pareto", "--tiles", "128,256", "--out", str(small)]) == 0
    err = capsys.readouterr().err  # progress within each variant, named
    assert "pareto: adc 8, 2 b/cell, tile 128, multibit DAC: chip batches: 1/1 (100 %)" in err
    assert {p.name for p in (small / "tiles").iterdir()} == {"tile128.toml", "tile256.toml"}
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    skipped = json.loads((out / "pareto.json").read_text())["skipped"]
    # the run's device (rram1) has 4 levels: 3 and 4 bits per cell cannot be programmed
    assert [(r["bits_per_cell"], "only 4" in r["reason"]) for r in skipped] == [(3, True), (4, True)]
    assert len(rows) + len(skipped) == sum(len(v) for v in PARETO_AXES.values()) - len(PARETO_AXES) + 1
    base = [r for r in rows if r["varied"] == "base"]
    assert len(base) == 1 and (base[0]["adc_bits"], base[0]["tile"]) == ("8", "256")
    by = {(r["varied"], r["adc_bits"]): float(r["energy_J"]) for r in rows if r["varied"] in ("adc_bits", "base")}
    energies = [by[k] for k in sorted(by, key=lambda k: int(k[1]))]
    assert all(a < b for a, b in zip(energies, energies[1:]))  # more ADC bits, more energy
    assert {p.name for p in (out / "tiles").iterdir()} == {f"tile{t}.toml" for t in PARETO_AXES["tile"]}
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    wv = {r["bits_per_cell"]: float(r["write_verify_J"]) for r in rows}
    assert len(wv) == 2 and all(e > 0 for e in wv.values())  # 1 and 2 bits per cell, programmed once each
    assert all(float(r["write_verify_per_inference_J"]) == pytest.approx(float(r["write_verify_J"]) / 1e6)
               for r in rows)
    data = json.loads((out / "pareto.json").read_text())
    front = pareto_front(data["rows"])
    assert front and all(not (o["energy_J"] < r["energy_J"] and o["acc_mean"] > r["acc_mean"])
                         for r in front for o in data["rows"])


def test_pareto_resumes_after_a_crash(run_dir, tmp_path, monkeypatch):
    import training.cost as tc

    out = tmp_path / "r"
    args = ["--run", str(run_dir), "--images", "8", "--pareto", "--tiles", "128,256", "--dacs", "multibit",
            "--out", str(out), "--quiet"]
    real, calls = tc.run_cost, []

    def dying(run_dir, ov, *a, **k):
        calls.append((ov["adc_bits"], ov["bits_per_cell"], ov["crossbar_config"][-12:]))
        if ov["adc_bits"] == 9:
            raise KeyboardInterrupt  # killed in the middle of the sweep
        return real(run_dir, ov, *a, **k)

    monkeypatch.setattr(tc, "run_cost", dying)
    assert main(args) == 130
    assert not (out / "pareto.csv").exists()
    finished = len((out / tc.PROGRESS_FILE).read_text().splitlines())
    assert finished == 5  # ADC bits 4-8; 9 was running
    counted = []
    monkeypatch.setattr(tc, "run_cost", lambda *a, **k: counted.append(1) or real(*a, **k))
    monkeypatch.chdir(run_dir.parent)  # resumed from elsewhere, the run named relative to there
    args[1] = run_dir.name
    assert main(args) == 0
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    variants = 7 + 3 + 1  # ADC bits, bits per cell (3 and 4 skipped: rram1 has 4 levels), tile 128
    assert len(rows) == variants - 2 and len(counted) == variants - finished  # only the unfinished ran
    assert not (out / tc.PROGRESS_FILE).exists()


def test_pareto_resume_takes_this_calls_amortisation_and_refuses_other_weights(run_dir, tmp_path, monkeypatch):
    """Finished variants are kept only for the same weights (a run retrained in its folder starts
    over), and the amortised write-verify energy is this call's ``--amortise``, not the first's."""
    import shutil

    import torch

    import training.cost as tc

    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    out = tmp_path / "r"
    args = ["--run", str(run_copy), "--images", "8", "--pareto", "--tiles", "256", "--dacs", "multibit",
            "--write-verify-tol-uS", "2", "--out", str(out), "--quiet"]
    real = tc.run_cost

    def dying(run_dir, ov, *a, **k):
        if ov["adc_bits"] == 6:
            raise KeyboardInterrupt
        return real(run_dir, ov, *a, **k)

    monkeypatch.setattr(tc, "run_cost", dying)
    assert main(args + ["--amortise", "1e3"]) == 130
    counted = []
    monkeypatch.setattr(tc, "run_cost", lambda *a, **k: counted.append(1) or real(*a, **k))
    assert main(args + ["--amortise", "1e9"]) == 0
    res = json.loads((out / "pareto.json").read_text())
    rows = res["rows"]
    assert len(counted) == len(rows) + len(res["skipped"]) - 2  # ADC bits 4 and 5 kept
    assert all(r["write_verify_per_inference_J"] == pytest.approx(r["write_verify_J"] / 1e9, rel=1e-12) for r in rows)

    shutil.rmtree(out)
    monkeypatch.setattr(tc, "run_cost", dying)
    assert main(args) == 130
    ckpt = torch.load(run_copy / "best.pt", weights_only=True)  # the run trained again: other weights
    first = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][first] = ckpt["model"][first] + 1e-3
    torch.save(ckpt, run_copy / "best.pt")
    counted.clear()
    monkeypatch.setattr(tc, "run_cost", lambda run_dir, ov, *a, **k: counted.append(1) or dying(run_dir, ov, *a, **k))
    assert main(args) == 130
    assert len(counted) == 3  # ADC bits 4 and 5 again (nothing kept), then 6


def test_pareto_progress_line_cut_by_a_kill_does_not_swallow_the_next(tmp_path):
    from training.cost import _append_progress, _read_progress

    path, ctx = tmp_path / "p.jsonl", {"run": "x"}
    _append_progress(path, ctx, "a", {"row": {"v": 1}})
    path.write_bytes(path.read_bytes() + b'{"context": {"ru')  # killed in the middle of a line
    _append_progress(path, ctx, "b", {"row": {"v": 2}})
    assert sorted(_read_progress(path, ctx)) == ["a", "b"]


def test_batchnorm_recalibration_per_chip_matches_evaluate_and_is_priced_apart(tmp_path, capsys):
    """``--set bn_recal_images=N`` recalibrates every chip as ``training.evaluate`` does (same
    accuracy per chip), and its forwards are reported apart, not in the per-inference cost."""
    from training.evaluate import evaluate_run

    d = tmp_path / "vgg"
    run(RunConfig(model="vgg8", dataset="digits", epochs=1, batch_size=32, train_limit=64, test_limit=48,
                  eval_chips=1, val_chips=1, eval_batch_size=48, sigma=0.1, threads=1, seed=0), d, quiet=True)
    out = tmp_path / "c"
    assert main(["--run", str(d), "--images", "48", "--chips", "2", "--out", str(out),
                 "--set", "bn_recal_images=32"]) == 0
    assert "per-chip BatchNorm recalibration: 32 training images per chip" in capsys.readouterr().out
    res = json.loads((out / "cost.json").read_text())
    assert res["summary"]["images"] == 2 * 48  # the recalibration images are not inferences
    assert res["bn_recal"]["images_per_chip"] == 32 and res["bn_recal"]["energy_per_chip_J"] > 0
    ref = evaluate_run(d, chips=2, overrides={"noise": "crossbar", "bn_recal_images": 32})
    assert res["accuracy_per_chip"] == pytest.approx(list(ref.acc_per_chip), abs=1e-12)
    assert ref.metrics["bn_recal_images_per_chip"] == 32


def test_batchnorm_recalibration_without_batchnorm_is_absent(run_dir, tmp_path):
    out = tmp_path / "c"
    assert main(["--run", str(run_dir), "--images", "16", "--out", str(out), "--quiet",
                 "--set", "bn_recal_images=32"]) == 0
    assert "bn_recal" not in json.loads((out / "cost.json").read_text())  # the MLP has no BatchNorm
