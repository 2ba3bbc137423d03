"""The API reference builds from the docstrings without a warning (tools/api_docs.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_api_reference_builds_without_warnings(tmp_path):
    spec = importlib.util.spec_from_file_location("api_docs", REPO / "tools" / "api_docs.py")
    api_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_docs)
    assert api_docs.build(tmp_path) == []
    for page in ("index.html", "cimsim/device/model.html", "cimsim/nn/modules.html", "training/evaluate.html",
                 "cimsim/crossbar/circuit.html"):
        assert (tmp_path / page).is_file(), page
    assert "sample_levels" in (tmp_path / "cimsim" / "device" / "model.html").read_text()
