"""Every script in examples/ runs at its default size and writes what it says."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "fit_your_cells.py": ["my_device.json", "fit.png", "layer_error.csv"],
    "your_model_on_the_crossbar.py": ["adc_sweep.csv"],
    "train_ovf_on_a_device.py": ["plain/eval.json", "ovf/eval.json", "ovf/config.json"],
    "writeverify_budget_of_a_run.py": ["run/eval.json", "budget/budget.csv", "budget/acc_vs_energy.png"],
    "sweep_on_ray.py": ["results.csv", "sweep_config.json"],
}


def test_every_example_is_listed():
    assert sorted(p.name for p in (REPO / "examples").glob("*.py")) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs(name, tmp_path):
    if name == "sweep_on_ray.py":
        pytest.importorskip("ray")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(REPO / "examples" / name), "--out", str(tmp_path / "out")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in EXAMPLES[name]:
        assert (tmp_path / "out" / f).is_file(), (f, r.stdout[-1000:])
