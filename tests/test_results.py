"""The results pipeline (training.results / training.report) end to end on a tiny suite (digits, MLP)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest

from training import report, results
from training.evaluate import EVAL_OVERRIDES, evaluate_run, parse_overrides
from training.run_config import ConfigError

TINY = """
name = "tiny"
description = "A tiny suite for the tests."
[defaults]
dataset = "digits"
model = "mlp"
epochs = 1
train_limit = 400
test_limit = 120
eval_chips = 4
val_chips = 1
threads = 1

[[stages]]
name = "repro"
kind = "sweep"
title = "paper noise"
methods = "plain,nit,ovf,nit_temp"
sigmas = "0,0.3"
seeds = 2
[stages.config]
noise = "paper"
device_model = "rram1"

[[stages]]
name = "longer"
kind = "sweep"
methods = "nit"
sigmas = "0.3"
seeds = 2
source = "repro"
[stages.config]
noise = "paper"
device_model = "rram1"
epochs = 2

[[stages]]
name = "ctl"
kind = "sweep"
title = "controls beside"
methods = "ovf_beta0"
sigmas = "0.3"
seeds = 2
source = "repro"
[stages.config]
noise = "paper"
device_model = "rram1"

[[stages]]
name = "dev"
kind = "sweep"
methods = "plain,nit"
sigmas = "2"
seeds = 1
[stages.config]
noise = "device"
device_model = "rram"
sigma_mode = "multiply"

[[stages]]
name = "xbar"
kind = "evaluate"
source = "dev"
chips = 3
  [[stages.variants]]
  label = "device"
  noise = "device"
  [[stages.variants]]
  label = "crossbar 6b"
  noise = "crossbar"
  adc_bits = 6

[[stages]]
name = "rt"
kind = "evaluate"
source = "dev"
methods = ["nit"]
chips = 3
  [[stages.variants]]
  label = "1 s"
  read_time_s = 1.0
  [[stages.variants]]
  label = "1 day"
  read_time_s = 100000.0

[[stages]]
name = "recal"
kind = "evaluate"
source = "dev"
methods = ["nit"]
chips = 4
  [[stages.variants]]
  label = "recalibrated"
  bn_recal_images = 16

[[stages]]
name = "wv"
kind = "writeverify"
source = "dev"
sigma = 2.0
args = ["--policies", "none,full", "--tolerances", "2", "--chips", "2", "--test-limit", "60"]

[[stages]]
name = "cost"
kind = "cost"
source = "dev"
methods = ["nit"]
sigma = 2.0
args = ["--images", "30", "--chips", "2", "--write-verify-tol-uS", "2"]
"""


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    from cimsim.crossbar.config import CrossbarConfig

    root = tmp_path_factory.mktemp("suite")
    path = root / "tiny.toml"
    stage = ['\n[[stages]]\nname = "ir"\nkind = "evaluate"\nsource = "dev"\nmethods = ["nit"]\nchips = 2']
    for tile in (8, 32):  # strong wires: a 32x32 tile loses far more than an 8x8 one
        for wires, gain in ((0.0, False), (50.0, False), (50.0, True)):
            f = root / f"t{tile}_{wires:g}_{gain}.toml"
            CrossbarConfig(tile_rows=tile, tile_cols=tile, r_row_segment_ohm=wires, r_col_segment_ohm=wires,
                           r_access_ohm=1000.0 if wires else 0.0, output_gain_calibration=gain).save(f)
            stage.append(f'  [[stages.variants]]\n  label = "{tile}, {wires:g}, {gain}"\n  noise = "crossbar"\n'
                         f'  crossbar_config = "{f}"')
    stage.append('\n[[stages]]\nname = "ir_wired"\nkind = "evaluate"\nsource = "dev"\nmethods = ["nit"]\nchips = 2')
    stage.append(f'  [[stages.variants]]\n  label = "32, 50, False"\n  noise = "crossbar"\n'
                 f'  crossbar_config = "{root / "t32_50_False.toml"}"')  # no wire-free variant beside it
    path.write_text(TINY + "\n".join(stage) + "\n")
    out = root / "results"
    rc = results.main(["run", "--suite", str(path), "--out", str(out), "--workers", "0"])
    return root, out, rc


def test_suite_runs_every_stage_and_resumes(suite_run, capsys):
    root, out, rc = suite_run
    assert rc == 0
    rows = list(csv.DictReader(open(out / "repro" / "results.csv")))
    assert len(rows) == 4 * 2 * 2 and all(r["status"] == "ok" for r in rows)
    ev = pd.read_csv(out / "xbar" / "results.csv")
    assert len(ev) == 2 * 2 and set(ev["variant"]) == {"device", "crossbar 6b"} and (ev["status"] == "ok").all()
    assert ((ev["acc_mean"] > 0.1) & (ev["acc_mean"] <= 1)).all()
    rt = pd.read_csv(out / "rt" / "results.csv")
    assert set(rt["method"]) == {"nit"} and len(rt) == 2
    assert (out / "cost" / "nit" / "pareto.csv").exists() and not (out / "cost" / "plain").exists()
    assert (out / "wv" / "budget.csv").exists() and (out / "suite.toml").read_text() == (root / "tiny.toml").read_text()
    # a second run has nothing left to do and leaves the rows as they were
    before = (out / "xbar" / "results.csv").read_text()
    assert results.main(["run", "--suite", str(root / "tiny.toml"), "--out", str(out), "--workers", "0"]) == 0
    assert (out / "xbar" / "results.csv").read_text() == before
    assert len(list(csv.DictReader(open(out / "repro" / "results.csv")))) == 16


def test_evaluate_variant_equals_direct_evaluation(suite_run):
    _, out, _ = suite_run
    ev = pd.read_csv(out / "xbar" / "results.csv")
    row = ev[ev["variant"] == "crossbar 6b"].iloc[0]
    direct = evaluate_run(row["run_dir"], chips=3, overrides={"noise": "crossbar", "adc_bits": 6}, threads=1)
    assert math.isclose(direct.metrics["acc_mean"], row["acc_mean"], rel_tol=1e-9)
    same = ev[ev["variant"] == "device"].iloc[0]
    own = evaluate_run(same["run_dir"], chips=3, threads=1)  # the run's own backend: the override changes nothing
    assert math.isclose(own.metrics["acc_mean"], same["acc_mean"], rel_tol=1e-9)


def test_report_writes_tables_verdicts_and_figures(suite_run, tmp_path):
    _, out, _ = suite_run
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 0
    md = (docs / "results.md").read_text()
    for text in ("paper noise", "**headline**: OVF beats NIT", "verdict", "xbar", "crossbar 6b", "wv", "no write-verify",
                 "Total single-thread CPU time", "#### Against stage `repro`",
                 "| OVF (NeFT) (repro) beats NIT (noise injection) (this stage) | 0.3 |",
                 "python -m training.cost --pareto", "write-verify (nJ/inference)"):
        assert text in md, text
    ir = _section(md, "ir")
    assert any("50 / 50 ohm per segment, access 1000 ohm | none |" in ln for ln in ir)
    assert any("largest tile within 1 point" in ln for ln in ir)
    assert any(ln.startswith("| 50 / 50 ohm per segment, access 1000 ohm | gain calibrated |") for ln in ir)
    assert any(ln.startswith("| no wires | none |") for ln in ir)
    wired = _section(md, "ir_wired")
    assert any(ln.startswith("| 50 / 50 ohm per segment, access 1000 ohm | none |") and "no wire-free variant" in ln
               for ln in wired), wired
    assert "#### The paper's claims" not in "\n".join(_section(md, "longer"))  # one method: no claim to check
    ctl = "\n".join(_section(md, "controls beside"))  # a control stage beside the sweep it controls
    assert "runs of plain, NIT (noise injection), OVF (NeFT), NIT + temperature (control) are those of stage `repro`" in ctl
    assert "| 0.3 | OVF (NeFT) |" in ctl and "| OVF, beta = 0 (control) |" in ctl and "| 0 |" not in ctl
    recal = _section(md, "recal")  # the MLP has no BatchNorm: the same chips give the same accuracy
    assert any(ln.startswith("| NIT (noise injection) | 2 | 1 |") and "| +0.0 [" in ln
               and "16 images per chip (0.13x its 120-image test pass)" in ln for ln in recal), recal
    longer = md.split("#### Against stage `repro`")[1].split("###")[0]
    assert longer.count(" beats ") == 4 and "not run" not in longer  # plain, NIT, OVF, NIT + T of repro at 0.3
    controls = md.split("#### What the controls explain")[1].split("###")[0]
    assert "| 0.3 | OVF (NeFT) |" in controls and "NIT + temperature (control)" in controls
    assert "claim vs NIT + T" in controls and "| 0 |" not in controls  # sigma 0 has nothing to explain
    repro = md.split("#### The paper's claims, checked")[1].split("####")[0]
    assert sum(ln.startswith("| OVF beats NIT |") or ln.startswith("| **headline**: OVF beats NIT at sigma 0.3 |")
               for ln in repro.splitlines()) == 1  # the headline's sigma is not stated twice
    authors = md.split("The authors' VGG-8 / MNIST numbers")[1].split("Expected KL")[0]
    assert "| OVF (NeFT) |" in authors and "(control)" not in authors  # the paper ran no control
    files = {p.name for p in (docs / "results").iterdir()}
    assert {"repro_accuracy.png", "repro.csv", "repro_summary.csv", "xbar.csv", "wv_budget.csv",
            "cost_nit_pareto.png", "cost_nit_pareto.csv"} <= files
    for link in [ln.split("](")[1].split(")")[0] for ln in md.splitlines() if "](results/" in ln]:
        assert (docs / link).exists(), link
    assert not (docs / ".results.tmp").exists()


def _section(md: str, title: str) -> list[str]:
    """The lines of a report's section ``### title``, without the note on stages run earlier."""
    lines = md.splitlines()
    start = lines.index(f"### {title}")
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("### ")), len(lines))
    return [ln for ln in lines[start:end] if ln.strip() and not ln.startswith("*Stage `")]


def test_report_keeps_records_and_reports_stages_run_earlier(suite_run, tmp_path, capsys):
    """A stage missing from --out is reported from the records the previous report kept (ledgers
    and configurations, never run folders), said so in the text; its numbers are unchanged."""
    import shutil
    from pathlib import Path

    _, out, _ = suite_run
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 0
    first = (docs / "results.md").read_text()
    rec = docs / "results" / report.RECORDS
    assert (rec / "repro" / "results.csv").read_text() == (out / "repro" / "results.csv").read_text()
    assert (rec / "repro" / "sweep_config.json").exists() and (rec / "wv" / "budget.csv").exists()
    assert (rec / "cost" / "nit" / "pareto.json").exists() and (rec / "dev" / "RECORD.json").exists()
    assert not any(p.name == "runs" or p.suffix == ".pt" for p in rec.rglob("*"))
    # a later run of only some stages: the others come from the records
    part = tmp_path / "part"
    part.mkdir()
    shutil.copyfile(out / "suite.toml", part / "suite.toml")
    shutil.copytree(out / "dev", part / "dev")
    assert results.main(["report", "--out", str(part), "--docs", str(docs)]) == 0
    err = capsys.readouterr().err
    assert "stage repro: not in --out" in err and "stage dev: not in --out" not in err
    md = (docs / "results.md").read_text()
    assert "Stage `repro` was not rerun for this report" in md and "Stage `dev` was not rerun" not in md
    for title in ("paper noise", "longer", "xbar", "rt", "wv", "cost"):  # the same sections as the first report
        assert _section(md, title) == _section(first, title) and _section(md, title), title
    assert (docs / "results" / report.RECORDS / "repro" / "results.csv").exists()  # carried on for the next report
    for link in [ln.split("](")[1].split(")")[0] for ln in md.splitlines() if "](results/" in ln]:
        assert (docs / link).exists(), link


def test_a_redefined_stage_reported_from_its_record_keeps_its_own_title(suite_run, tmp_path):
    """A record made under an earlier definition of its stage (RECORD.json keeps it) is reported
    under that definition's title, with a note that the new definition has not run."""
    import shutil

    _, out, _ = suite_run
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 0
    first = (docs / "results.md").read_text()
    rec = json.loads((docs / "results" / report.RECORDS / "cost" / "RECORD.json").read_text())
    assert rec["definition"]["name"] == "cost" and rec["definition"]["source"] == "dev"
    part = tmp_path / "part"
    part.mkdir()
    text = (out / "suite.toml").read_text().replace('name = "cost"\n', 'name = "cost"\ntitle = "cost, redone"\n')
    text = text.replace('"--images", "30"', '"--images", "40"')
    (part / "suite.toml").write_text(text)
    shutil.copytree(out / "dev", part / "dev")
    assert results.main(["report", "--out", str(part), "--docs", str(docs)]) == 0
    md = (docs / "results.md").read_text()
    assert _section(md, "cost") == _section(first, "cost") and "### cost, redone" not in md
    assert 'Stage `cost` has been redefined since (args differs); its new definition, "cost, redone"' in md
    assert "Stage `xbar` has been redefined" not in md  # unchanged stages say nothing


def test_report_says_a_sweep_is_unfinished(suite_run, tmp_path):
    """A sweep stage with fewer rows than its grid says so above its tables (it had read "3 of 3
    runs finished ok" for a stage of 16)."""
    import shutil

    _, out, _ = suite_run
    part = tmp_path / "part"
    shutil.copytree(out, part, ignore=shutil.ignore_patterns("runs"))
    ledger = part / "longer" / "results.csv"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:2]))  # the header and one of its 2 runs
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(part), "--docs", str(docs)]) == 0
    md = (docs / "results.md").read_text()
    assert "Unfinished: 1 of its 2 runs" in "".join(_section(md, "longer"))
    assert "Unfinished" not in "".join(_section(md, "paper noise"))


def test_cost_table_picks_its_energy_unit_and_shows_recalibration(suite_run, tmp_path):
    """Energies of a VGG-8 size read in uJ (they had five-digit nJ); each chip's BatchNorm
    recalibration energy, when priced, gets its own column."""
    import shutil

    _, out, _ = suite_run
    assert results.main(["report", "--out", str(out), "--docs", str(tmp_path / "d0")]) == 0
    md0 = "\n".join(_section((tmp_path / "d0" / "results.md").read_text(), "cost"))
    assert "energy (nJ)" in md0 and "BN recalibration" not in md0  # a tiny MLP, no BatchNorm
    big = tmp_path / "big"
    shutil.copytree(out, big, ignore=shutil.ignore_patterns("runs"))
    path = big / "cost" / "nit" / "pareto.json"
    d = json.loads(path.read_text())
    for r in d["rows"]:
        r["energy_J"] *= 1e6  # now tens of uJ and more
        r["bn_recal_energy_per_chip_J"] = 0.0123
    path.write_text(json.dumps(d))
    assert results.main(["report", "--out", str(big), "--docs", str(tmp_path / "d1")]) == 0
    lines = _section((tmp_path / "d1" / "results.md").read_text(), "cost")
    head = next(ln for ln in lines if ln.startswith("| varied |"))
    assert "| energy (uJ) |" in head and head.rstrip().endswith("| BN recalibration (mJ/chip) |")
    base = next(ln for ln in lines if ln.startswith("| base |"))
    e_uJ = next(r["energy_J"] for r in d["rows"] if r["varied"] == "base") * 1e6
    assert f"| {e_uJ:.1f} |" in base and base.rstrip().endswith("| 12.30 |")


def test_source_runs_follow_a_moved_results_folder(suite_run, tmp_path):
    """A copied results folder uses its own runs (<out>/<source>/runs/<name>), never the tree its
    rows were recorded in, whether that tree is still there or gone."""
    import shutil
    from pathlib import Path

    _, out, _ = suite_run
    moved = tmp_path / "moved"
    shutil.copytree(out / "dev", moved / "dev")
    csv_path = moved / "dev" / "results.csv"
    rows = list(csv.DictReader(open(csv_path)))
    names = [Path(r["run_dir"]).name for r in rows]
    assert all(Path(r["run_dir"]).is_dir() for r in rows)  # the original tree is still there
    stage = results.Stage(name="c", kind="cost", title="c", source="dev")
    mine = [str(moved / "dev" / "runs" / n) for n in names]
    assert [r["run_dir"] for r in results.source_runs(moved, stage)] == mine
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**r, "run_dir": f"gone/dev/runs/{n}"} for r, n in zip(rows, names)])
    assert [r["run_dir"] for r in results.source_runs(moved, stage)] == mine


def test_diff_interval_and_verdict():
    df = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "sigma": [0.1] * 6, "status": ["ok"] * 6,
                       "acc_mean": [0.9, 0.91, 0.92, 0.5, 0.52, 0.51],
                       "acc_ci95_low": [0.0] * 6, "acc_ci95_high": [1.0] * 6})
    d, lo, hi, n = report.diff_interval(df, "a", "b", 0.1)
    assert math.isclose(d, 0.4, abs_tol=1e-12) and lo > 0.3 and hi < 0.5 and n == 3
    assert report.verdict((d, lo, hi, n)) == "holds"
    assert report.verdict(report.diff_interval(df, "b", "a", 0.1)) == "fails"
    noisy = df.assign(acc_mean=[0.9, 0.5, 0.7, 0.6, 0.8, 0.7])
    assert report.verdict(report.diff_interval(noisy, "a", "b", 0.1)) == "not resolved"
    assert report.diff_interval(df, "a", "c", 0.1) is None and report.verdict(None) == "not run"


def test_control_shares_divide_each_ingredient_by_the_advantage():
    seeds = 3
    acc = {"nit": [0.70, 0.71, 0.72], "ovf": [0.80, 0.81, 0.82], "irs": [0.74, 0.76, 0.75],
           "nit_temp": [0.76, 0.77, 0.75], "nit_multi": [0.71, 0.72, 0.73], "ovf_beta0": [0.79, 0.80, 0.81]}
    df = pd.DataFrame([{"method": m, "sigma": 0.35, "seed": k, "status": "ok", "acc_mean": a[k],
                        "acc_ci95_low": 0.0, "acc_ci95_high": 1.0} for m, a in acc.items() for k in range(seeds)])
    rows = {(r["neft"], r["control"]): r for r in report.control_shares(df, 0.35)}
    assert set(rows) == {("ovf", "nit_temp"), ("ovf", "nit_multi"), ("ovf", "ovf_beta0"),
                         ("irs", "nit_temp"), ("irs", "nit_multi")}  # an OVF ablation says nothing of IRS
    assert math.isclose(rows["ovf", "nit_temp"]["share"], 0.05 / 0.10)  # (NIT+T - NIT) / (OVF - NIT)
    assert math.isclose(rows["ovf", "ovf_beta0"]["share"], 0.01 / 0.10)  # (OVF - OVF beta 0) / (OVF - NIT)
    assert math.isclose(rows["irs", "nit_multi"]["share"], 0.01 / 0.04)
    tied = df.assign(acc_mean=np.where(df["method"] == "ovf", df["acc_mean"] - 0.10, df["acc_mean"]))
    tied.loc[(tied["method"] == "ovf") & (tied["seed"] == 0), "acc_mean"] = 0.60  # advantage not resolved
    assert all(r["share"] is None for r in report.control_shares(tied, 0.35) if r["neft"] == "ovf")


def test_recal_gains_pair_the_same_runs_without_and_with():
    base = {"status": "ok", "acc_ci95_low": 0.0, "acc_ci95_high": 0.02}
    sweep = pd.DataFrame([{**base, "method": m, "sigma": 0.35, "seed": k, "acc_mean": a}
                          for m, accs in (("nit", (0.50, 0.60)), ("ovf", (0.70, 0.72))) for k, a in enumerate(accs)])
    recal = pd.DataFrame([{**base, "method": m, "sigma": 0.35, "seed": k, "acc_mean": a}
                          for m, accs in (("ovf", (0.71, 0.74)), ("nit", (0.60, 0.70))) for k, a in enumerate(accs)])
    rows = report.recal_gains(sweep, recal)
    assert [r["method"] for r in rows] == ["nit", "ovf"]  # in the report's method order
    nit = rows[0]
    assert nit["seeds"] == 2 and math.isclose(nit["without"], 0.55) and math.isclose(nit["with"], 0.65)
    d, lo, hi, n = nit["gain"]
    assert math.isclose(d, 0.10) and math.isclose(lo, d) and math.isclose(hi, d)  # paired: both seeds gain 0.10
    ovf = rows[1]["gain"]
    assert math.isclose(ovf[0], 0.015) and ovf[1] < 0.01 < 0.02 < ovf[2]  # gains 0.01 and 0.02: t with 1 dof
    one = report.recal_gains(sweep[sweep["seed"] == 0], recal)  # one seed: the two chip intervals combined
    assert math.isclose(one[0]["gain"][2] - one[0]["gain"][0], math.hypot(0.01, 0.01))


def test_parse_overrides_types_and_refusals():
    assert parse_overrides(["noise=crossbar", "adc_bits=6", "read_time_s=1e5", "keep_first=yes"]) == \
        {"noise": "crossbar", "adc_bits": 6, "read_time_s": 1e5, "keep_first": True}
    for bad in (["epochs=3"], ["adc_bits=0"], ["noise"], ["adc_bits=six"]):
        with pytest.raises(ConfigError):
            parse_overrides(bad)
    assert "method" not in EVAL_OVERRIDES and "seed" not in EVAL_OVERRIDES


@pytest.mark.parametrize("text, msg", [
    ("[[stages]]\nname='a'\nkind='nope'\n", "kind"),
    ("[[stages]]\nname='a'\nkind='sweep'\nmethods='plain'\nsigmas='0'\nseeds=1\n[stages.config]\nmodel='alexnet'\n", "model"),
    ("[[stages]]\nname='e'\nkind='evaluate'\nsource='nowhere'\n", "source"),
    ("[defaults]\n", "no [[stages]]"),
    ("[[stages]]\nname='a'\nkind='sweep'\nmethods='plain'\nsigmas='0'\nseeds=1\n"
     "[[stages]]\nname='e'\nkind='evaluate'\nsource='a'\n[[stages.variants]]\nlabel='x'\nepochs=3\n", "cannot change"),
    ("[[stages]]\nname='a'\nkind='sweep'\nmethods='plain'\nsigmas='0'\nseeds=1\nbogus=1\n", "bogus"),
    ("[[stages]]\nname='a'\nkind='sweep'\nmethods='plain,nit_tmp'\nsigmas='0'\nseeds=1\n", "unknown method 'nit_tmp'"),
])
def test_bad_suite_is_one_line_exit_2_nothing_written(tmp_path, capsys, text, msg):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert results.main(["run", "--suite", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and str(path) in err
    assert not out.exists()


def test_unknown_suite_and_report_without_run(tmp_path, capsys):
    assert results.main(["run", "--suite", "no_such_suite", "--out", str(tmp_path / "o")]) == 2
    assert "no_such_suite" in capsys.readouterr().err
    assert results.main(["report", "--out", str(tmp_path / "empty"), "--docs", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()


def test_shipped_suites_load():
    for name in ("cpu", "paper"):
        suite = results.load_suite(name)
        sweeps = [s for s in suite.stages if s.kind == "sweep"]
        # enough chips for the spread: 100 (LeNet-5), 50 (VGG-8), 20 where every chip's tiles are
        # solved for IR drop (seconds per chip, docs/design.md "IR drop")
        assert sweeps and all(suite.base_config(s).eval_chips >= (
            20 if "ir_drop" in (suite.base_config(s).crossbar_config or "") else
            50 if suite.base_config(s).model == "vgg8" else 100) for s in sweeps)
    cpu = results.load_suite("cpu").stage("repro_lenet")
    assert set(cpu.methods) == {"plain", "nit", "ovf", "irs", "correctnet"} and len(cpu.seeds) == 3
    assert np.allclose(cpu.sigmas, np.arange(0, 0.41, 0.05))
    suite = results.load_suite("cpu")  # VGG-8 at CPU scale: every method, the headline's sigma_d
    vgg = suite.stage("repro_vgg8")
    assert set(vgg.methods) == {"plain", "nit", "ovf", "irs", "correctnet"} and np.isclose(vgg.sigmas, 0.35).any()
    cfg = suite.base_config(vgg)
    assert (cfg.model, cfg.noise, cfg.device_model, cfg.precision) == ("vgg8", "paper", "rram1", "bfloat16")


def test_sweep_source_must_name_an_earlier_sweep(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[[stages]]\nname='a'\nkind='sweep'\nmethods='nit'\nsigmas='0.1'\nseeds=1\nsource='nope'\n")
    with pytest.raises(results.SuiteError, match="source must name an earlier sweep stage"):
        results.load_suite(str(path))


def test_mnist_stage_is_skipped_without_a_folder(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text("[defaults]\nmodel='mlp'\n[[stages]]\nname='m'\nkind='sweep'\nmethods='plain'\nsigmas='0'\n"
                    "seeds=1\n[stages.config]\ndataset='mnist'\n")
    assert results.main(["run", "--suite", str(path), "--out", str(tmp_path / "o"), "--workers", "0"]) == 0
    assert "skipped" in capsys.readouterr().err and not (tmp_path / "o" / "m").exists()
    assert results.main(["run", "--suite", str(path), "--out", str(tmp_path / "o"), "--data-dir", "mnist=/nonexistent"]) == 2


def test_shipped_report_links_resolve():
    """docs/results.md cites only files that ship beside it."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    md = (docs / "results.md").read_text()
    links = [seg.split(")")[0] for seg in md.split("](")[1:]]
    assert links and all((docs / link).exists() for link in links if link.startswith("results/"))
    assert "**headline**" in md and "Total single-thread CPU time" in md
