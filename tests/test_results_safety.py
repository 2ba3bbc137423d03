"""``python -m training.results`` against bad input (issue #15): a bad --out / --docs, a --docs holding
the user's own ``results/``, malformed suite files, damaged stage ledgers, a suite changed under a
results folder. Each is one line on stderr and exit 2 before any work, or a repair that loses nothing."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from training import results
from training.report import MARKER, STAMP

MINI = """
name = "mini"
[defaults]
dataset = "digits"
model = "mlp"
epochs = 1
train_limit = 256
test_limit = 100
eval_chips = 2
val_chips = 1
threads = 1

[[stages]]
name = "sw"
kind = "sweep"
methods = "nit"
sigmas = "0.2"
seeds = 1

[[stages]]
name = "ev"
kind = "evaluate"
source = "sw"
chips = 2
  [[stages.variants]]
  label = "a"
  read_time_s = 1.0
  [[stages.variants]]
  label = "b"
  read_time_s = 100.0
"""


def _err(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    (root / "mini.toml").write_text(MINI)
    out = root / "results"
    assert results.main(["run", "--suite", str(root / "mini.toml"), "--out", str(out), "--workers", "0"]) == 0
    return root, out


def _copy(mini_run, tmp_path):
    root, out = mini_run
    shutil.copytree(out, tmp_path / "results")
    shutil.copy(root / "mini.toml", tmp_path / "mini.toml")
    return tmp_path / "mini.toml", tmp_path / "results"


# ------------------------------------------------------------------------- --out and --docs
@pytest.mark.parametrize("cmd", ["run", "report"])
@pytest.mark.parametrize("where", ["file", "under_file"])
def test_bad_out_is_one_line_exit_2(tmp_path, capsys, cmd, where):
    f = tmp_path / "afile"
    f.write_text("mine\n")
    (tmp_path / "mini.toml").write_text(MINI)
    out = f if where == "file" else f / "x"
    argv = ["run", "--suite", str(tmp_path / "mini.toml")] if cmd == "run" else ["report", "--docs", str(tmp_path / "d")]
    assert results.main(argv + ["--out", str(out)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--out" in err[0], err
    assert f.read_text() == "mine\n" and not (tmp_path / "d").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_bad_docs_is_one_line_exit_2(mini_run, tmp_path, capsys, where):
    _, out = mini_run
    f = tmp_path / "afile"
    f.write_text("mine\n")
    docs = f if where == "file" else f / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--docs" in err[0], err
    assert f.read_text() == "mine\n"


def test_report_never_deletes_a_results_folder_it_did_not_write(mini_run, tmp_path, capsys):
    _, out = mini_run
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    (docs / "results" / "thesis.tex").write_text("my own work\n")
    (docs / ".results.tmp").mkdir()
    (docs / ".results.tmp" / "keep.txt").write_text("also mine\n")
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and str(docs / "results") in err[0] and MARKER in err[0], err
    assert (docs / "results" / "thesis.tex").read_text() == "my own work\n"
    assert (docs / ".results.tmp" / "keep.txt").read_text() == "also mine\n"
    assert not (docs / "results.md").exists()
    assert sorted(p.name for p in docs.iterdir()) == [".results.tmp", "results"]


def test_report_never_overwrites_a_results_md_it_did_not_write(mini_run, tmp_path, capsys):
    _, out = mini_run
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("# My results\n")
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 2
    assert len(_err(capsys)) == 1 and (docs / "results.md").read_text() == "# My results\n"


def test_report_replaces_its_own_output(mini_run, tmp_path):
    _, out = mini_run
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    (docs / ".results.tmp").mkdir()  # the user's (or an old report's): left alone
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 0
    assert STAMP in (docs / "results.md").read_text() and (docs / "results" / MARKER).is_file()
    assert {p.name for p in (docs / "results").iterdir()} >= {"sw.csv", "ev.csv", MARKER}
    (docs / "results" / "stale.png").write_text("x")
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 0  # its own: replaced
    assert not (docs / "results" / "stale.png").exists() and (docs / "results" / MARKER).is_file()
    assert sorted(p.name for p in docs.iterdir()) == [".results.tmp", "results", "results.md"]


def test_shipped_results_folder_carries_the_marker():
    docs = Path(__file__).resolve().parents[1] / "docs"
    assert (docs / "results" / MARKER).is_file() and STAMP in (docs / "results.md").read_text()


# ------------------------------------------------------------------------- suite files
@pytest.mark.parametrize("line, msg", [
    ('seeds = "0,4,x"', "seeds"),
    ('sigmas = [0.1, "x"]', "sigmas"),
    ('seed = "x"', "seed"),
    ("methods = 5", "methods"),
    ('config = "x"', "config"),
    ('sigma = "high"', "sigma"),
])
def test_malformed_stage_fields_are_one_line(tmp_path, capsys, line, msg):
    key = line.split("=")[0].strip()
    body = {"name": '"a"', "kind": '"sweep"', "methods": '"plain"', "sigmas": '"0.1"', "seeds": "1"}
    body[key] = line.split("=", 1)[1].strip()
    path = tmp_path / "bad.toml"
    path.write_text("[[stages]]\n" + "".join(f"{k} = {v}\n" for k, v in body.items()))
    out = tmp_path / "out"
    assert results.main(["run", "--suite", str(path), "--out", str(out)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and str(path) in err[0] and msg in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("text", ["stages = [1]\n", "defaults = 3\n[[stages]]\nname='a'\nkind='sweep'\n",
                                  "[[stages]]\nname='e'\nkind='sweep'\nmethods='plain'\nsigmas='0'\nseeds=1\n"
                                  "[[stages]]\nname='v'\nkind='evaluate'\nsource='e'\nvariants='x'\n"])
def test_malformed_suite_shapes_are_one_line(tmp_path, capsys, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert results.main(["run", "--suite", str(path), "--out", str(tmp_path / "out")]) == 2
    err = _err(capsys)
    assert len(err) == 1 and str(path) in err[0], err
    assert not (tmp_path / "out").exists()


def test_seed_count_as_text_means_a_count(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[[stages]]\nname='a'\nkind='sweep'\nmethods='plain'\nsigmas='0.1'\nseeds='3'\n")
    assert results.load_suite(str(path)).stages[0].seeds == (0, 1, 2)  # as --seeds 3, not seed 3


def test_stage_whose_options_cannot_work_is_refused_before_any_run(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(MINI + "\n[[stages]]\nname='bad'\nkind='sweep'\nmethods='plain'\nsigmas='0.1'\nseeds=1\n"
                           "[stages.config]\nnoise='device'\ndevice_model='no_such_model'\n")
    out = tmp_path / "out"
    assert results.main(["run", "--suite", str(path), "--out", str(out), "--workers", "0"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "bad" in err[0] and "no_such_model" in err[0], err
    assert not (out / "sw").exists()  # nothing ran


# ------------------------------------------------------------------------- resuming
def test_damaged_evaluation_ledger_is_repaired_and_rerun(mini_run, tmp_path, capsys):
    suite, out = _copy(mini_run, tmp_path)
    ledger = out / "ev" / "results.csv"
    lines = ledger.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    ledger.write_text(lines[0] + lines[1] + lines[2][:25])  # the last row cut short
    capsys.readouterr()
    assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0", "--stages", "ev"]) == 0
    err = [ln for ln in _err(capsys) if "damaged" in ln]
    assert len(err) == 1 and str(ledger) in err[0] and "line 3" in err[0]
    with open(ledger, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["variant"], r["status"]) for r in rows) == [("a", "ok"), ("b", "ok")]


def test_changed_evaluation_variant_is_refused_not_silently_kept(mini_run, tmp_path, capsys):
    suite, out = _copy(mini_run, tmp_path)
    before = (out / "ev" / "results.csv").read_bytes()
    suite.write_text(MINI.replace("read_time_s = 100.0", "read_time_s = 1000.0"))
    assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "'ev'" in err[0] and "'b'" in err[0], err
    assert (out / "ev" / "results.csv").read_bytes() == before
    suite.write_text(MINI + "  [[stages.variants]]\n  label = \"c\"\n  read_time_s = 10.0\n")  # a new variant: fine
    assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0"]) == 0
    with open(out / "ev" / "results.csv", newline="") as fh:
        assert sorted(r["variant"] for r in csv.DictReader(fh)) == ["a", "b", "c"]


def test_evaluate_stage_resumed_from_another_folder_keeps_its_rows(mini_run, tmp_path, capsys, monkeypatch):
    """Finished evaluations are recognised by their run, not by how its path was spelled: a ledger
    written with paths relative to one folder, resumed from another with --out absolute, has nothing
    to do (it had recomputed all and paired every run twice in the report)."""
    suite, out = _copy(mini_run, tmp_path)
    ledger = out / "ev" / "results.csv"
    with open(ledger, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(ledger, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([{**r, "run_dir": "results/sw/runs/" + Path(r["run_dir"]).name} for r in rows])
    before = ledger.read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0", "--stages", "ev"]) == 0
    assert "0 evaluation(s) to do" in capsys.readouterr().err
    assert ledger.read_bytes() == before


def test_a_stage_not_run_keeps_its_recorded_definition(mini_run, tmp_path, capsys):
    """Running other stages (--stages) must not record a changed stage's new definition over the one
    its rows were made with: the change is still refused when that stage runs."""
    suite, out = _copy(mini_run, tmp_path)
    before = (out / "ev" / "results.csv").read_bytes()
    suite.write_text(MINI.replace("read_time_s = 100.0", "read_time_s = 1000.0"))
    assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0", "--stages", "sw"]) == 0
    assert "read_time_s = 100.0" in (out / "suite.toml").read_text()
    capsys.readouterr()
    assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0", "--stages", "ev"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "'ev'" in err[0] and "'b'" in err[0], err
    assert (out / "ev" / "results.csv").read_bytes() == before


def test_second_runner_of_an_evaluate_stage_is_refused(mini_run, tmp_path, capsys):
    from training.runfolder import RunLock

    suite, out = _copy(mini_run, tmp_path)
    suite.write_text(MINI + "  [[stages.variants]]\n  label = \"c\"\n  read_time_s = 10.0\n")  # work to do
    before = (out / "ev" / "results.csv").read_bytes()
    with RunLock(out / "ev"):  # another runner holds the stage
        capsys.readouterr()
        assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0", "--stages", "ev"]) == 2
    err = [ln for ln in _err(capsys) if not ln.startswith("== stage")]
    assert len(err) == 1 and "another process" in err[0] and str(out / "ev") in err[0], err
    assert (out / "ev" / "results.csv").read_bytes() == before
    assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0", "--stages", "ev"]) == 0


def test_evaluate_variant_whose_file_changed_is_refused(mini_run, tmp_path, capsys):
    """A variant naming a crossbar_config file whose contents changed since its rows were made is
    refused; the rows would otherwise stand for the new file."""
    from cimsim.crossbar.config import CrossbarConfig

    suite, out = _copy(mini_run, tmp_path)
    xb = tmp_path / "xb.toml"
    xb.write_text(CrossbarConfig(adc_bits=8).to_toml())
    suite.write_text(MINI + f'  [[stages.variants]]\n  label = "xb"\n  noise = "crossbar"\n  crossbar_config = "{xb}"\n')
    args = ["run", "--suite", str(suite), "--out", str(out), "--workers", "0", "--stages", "ev"]
    assert results.main(args) == 0
    before = (out / "ev" / "results.csv").read_bytes()
    xb.write_text(CrossbarConfig(adc_bits=4).to_toml())
    capsys.readouterr()
    assert results.main(args) == 2
    err = _err(capsys)
    assert len(err) == 1 and "'xb'" in err[0] and "crossbar_config" in err[0], err
    assert (out / "ev" / "results.csv").read_bytes() == before
    xb.write_text(CrossbarConfig(adc_bits=8).to_toml())
    assert results.main(args) == 0


def test_changed_sweep_options_are_refused_before_any_stage_runs(mini_run, tmp_path, capsys):
    suite, out = _copy(mini_run, tmp_path)
    suite.write_text(MINI.replace("epochs = 1", "epochs = 2"))
    assert results.main(["run", "--suite", str(suite), "--out", str(out), "--workers", "0"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "epochs" in err[0], err


# ------------------------------------------------------------------------- report inputs
def test_report_paper_csv_given_but_missing_or_malformed_is_one_line(mini_run, tmp_path, capsys):
    """An explicit --paper that is not there was silently left out of the report."""
    _, out = mini_run
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs), "--paper", str(tmp_path / "nope.csv")]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--paper" in err[0] and not docs.exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert results.main(["report", "--out", str(out), "--docs", str(docs), "--paper", str(bad)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--paper" in err[0] and str(bad) in err[0]
    assert not (docs / "results.md").exists()


def test_report_with_a_damaged_record_is_one_line_nothing_written(mini_run, tmp_path, capsys):
    _, out0 = mini_run
    out = tmp_path / "results"
    shutil.copytree(out0, out)
    (out / "sw" / "sweep_config.json").write_text('{"base": {"model": "ml')
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "sweep_config.json" in err[0], err
    assert not docs.exists()  # nothing left behind, not even a temporary folder
    (out / "suite.toml").write_text("[[stages]]\nname = 'sw'\n")  # a stage without its kind
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "suite.toml" in err[0], err


def test_rerun_retries_a_failed_sweep_cell(tmp_path, monkeypatch):
    """Exit 1 says "rerun to retry": the rerun runs the failed cell again and its row becomes ok."""
    from training.sweep import FAULT_ENV

    (tmp_path / "mini.toml").write_text(MINI)
    args = ["run", "--suite", str(tmp_path / "mini.toml"), "--out", str(tmp_path / "results"), "--workers", "0",
            "--stages", "sw"]
    monkeypatch.setenv(FAULT_ENV, "raise=nit_sigma0.2000_seed0")
    assert results.main(args) == 1
    monkeypatch.delenv(FAULT_ENV)
    assert results.main(args) == 0
    with open(tmp_path / "results" / "sw" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["status"]) for r in rows] == [("nit", "ok")]


# ------------------------------------------------------------------------- --continue-from
def _continue(suite, out, docs):
    return ["run", "--suite", str(suite), "--out", str(out), "--workers", "0", "--continue-from", str(docs)]


def test_continue_from_records_runs_only_what_they_lack(mini_run, tmp_path, capsys):
    """A new machine: the report's records stand in for the results folder. Finished cells and
    evaluations are not run again; a seed added to the sweep runs, and its evaluations too."""
    root, out = mini_run
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 0
    suite = tmp_path / "mini.toml"
    suite.write_text(MINI)
    new = tmp_path / "new"
    assert results.main(_continue(suite, new, docs)) == 0
    for stage in ("sw", "ev"):
        assert (new / stage / "results.csv").read_bytes() == (out / stage / "results.csv").read_bytes()
    assert not (new / "sw" / "runs").exists()  # nothing trained
    assert not (new / "sw" / "RECORD.json").exists()
    suite.write_text(MINI.replace("seeds = 1", "seeds = 2"))
    new2 = tmp_path / "new2"
    assert results.main(_continue(suite, new2, docs)) == 0
    with open(new2 / "sw" / "results.csv", newline="") as fh:
        sw = list(csv.DictReader(fh))
    assert [(r["seed"], r["status"]) for r in sw] == [("0", "ok"), ("1", "ok")]
    assert [p.name for p in (new2 / "sw" / "runs").iterdir()] == ["nit_sigma0.2000_seed1"]
    with open(new2 / "ev" / "results.csv", newline="") as fh:
        ev = list(csv.DictReader(fh))
    assert sorted((r["seed"], r["variant"], r["status"]) for r in ev) == [
        ("0", "a", "ok"), ("0", "b", "ok"), ("1", "a", "ok"), ("1", "b", "ok")]


@pytest.mark.parametrize("change, word", [("epochs = 1", "epochs"), ("read_time_s = 100.0", "variant")])
def test_continue_from_a_record_of_another_definition_is_one_line_nothing_written(mini_run, tmp_path, capsys,
                                                                                   change, word):
    root, out = mini_run
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 0
    suite = tmp_path / "mini.toml"
    suite.write_text(MINI.replace(change, {"epochs = 1": "epochs = 2",
                                           "read_time_s = 100.0": "read_time_s = 1000.0"}[change]))
    capsys.readouterr()
    assert results.main(_continue(suite, tmp_path / "new", docs)) == 2
    err = _err(capsys)
    assert len(err) == 1 and "record" in err[0] and word in err[0], err
    assert not (tmp_path / "new").exists()
    assert results.main(_continue(suite, tmp_path / "new", tmp_path / "nodocs")) == 2
    err = _err(capsys)
    assert len(err) == 1 and "--continue-from" in err[0], err
    assert not (tmp_path / "new").exists()


def test_continue_from_records_continues_only_what_can_be_checked(mini_run, tmp_path, capsys):
    """Not continued, each with a line saying why: a stage with results in --out (kept as it is), an
    evaluation whose source runs are neither continued now nor the recorded ones, a record made
    before definitions were recorded, a sweep record without its sweep_config.json."""
    import json

    root, out = mini_run
    docs = tmp_path / "docs"
    assert results.main(["report", "--out", str(out), "--docs", str(docs)]) == 0
    suite = tmp_path / "mini.toml"
    suite.write_text(MINI)
    rec = docs / "results" / "records"
    capsys.readouterr()
    new = tmp_path / "new"  # the evaluation alone: its source's runs are not here
    assert results.records_to_continue(results.load_suite(str(suite)), new, docs, ["ev"]) == []
    assert "not continued (its source stage sw" in capsys.readouterr().err
    shutil.copytree(out / "sw", new / "sw")  # the recorded runs are here: it may continue
    assert [s.name for s, _ in results.records_to_continue(results.load_suite(str(suite)), new, docs, ["ev"])] == ["ev"]
    mine = (new / "sw" / "results.csv").read_bytes()
    assert [s.name for s, _ in results.records_to_continue(results.load_suite(str(suite)), new, docs)] == ["ev"]
    assert "stage sw: not continued (it has results in" in capsys.readouterr().err
    note = json.loads((rec / "ev" / "RECORD.json").read_text())
    del note["definition"]
    (rec / "ev" / "RECORD.json").write_text(json.dumps(note))
    (rec / "sw" / "sweep_config.json").unlink()
    assert results.records_to_continue(results.load_suite(str(suite)), tmp_path / "new2", docs) == []
    err = capsys.readouterr().err
    assert "stage sw: not continued (its record has no sweep_config.json" in err
    assert "stage ev: not continued (its record predates recorded definitions" in err
    assert (new / "sw" / "results.csv").read_bytes() == mine


def test_cost_stage_done_needs_no_source_runs(tmp_path, capsys):
    """A cost stage whose every method has its pareto.json (e.g. continued from records) is done,
    even where its source runs are not (exit 0, nothing run)."""
    st = results.Stage(name="co", kind="cost", source="sw", methods=("nit",), sigma=0.2)
    (tmp_path / "co" / "nit").mkdir(parents=True)
    (tmp_path / "co" / "nit" / "pareto.json").write_text("{}\n")
    assert results.run_cost_stage(st, tmp_path) == 0
    assert "done already" in capsys.readouterr().err
    (tmp_path / "co" / "nit" / "pareto.json").unlink()
    assert results.run_cost_stage(st, tmp_path) == 1  # not done and no source runs: says so, exit 1
