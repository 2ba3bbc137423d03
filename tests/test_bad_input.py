"""Bad inputs to programming, calibration, the MVM, configs and the cimsim commands: a clear error
(one line naming the file, row or option) or a documented NaN, never a silently wrong number (issue #15)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cimsim import nn as cim
from cimsim.crossbar.config import CrossbarConfig
from cimsim.crossbar.mvm_ref import matmul_quantized, mvm_reference
from cimsim.crossbar.program import program

CFG = CrossbarConfig(device="ideal", adc_bits=8)


def _chip(seed=1, cfg=CFG, shape=(8, 16)):
    w = np.random.default_rng(0).normal(size=shape)
    return program(w, cfg, seed=seed), w


@pytest.mark.parametrize("kernel", ["numba", "torch"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_rows_give_nan_rows_and_leave_the_others_alone(kernel, bad):
    chip, _ = _chip()
    x = np.random.default_rng(1).normal(size=(4, 16))
    chip.calibrate(x)
    expect = chip.matmul(x, kernel=kernel)
    x2 = x.copy()
    x2[1, 3] = bad
    y = chip.matmul(x2, kernel=kernel)
    assert np.isnan(y[1]).all()
    np.testing.assert_array_equal(np.delete(y, 1, axis=0), np.delete(expect, 1, axis=0))
    ref = mvm_reference(chip, x2)
    assert np.isnan(ref[1]).all()
    np.testing.assert_array_equal(np.delete(ref, 1, axis=0), np.delete(mvm_reference(chip, x), 1, axis=0))


def test_first_uncalibrated_call_calibrates_on_the_finite_rows_only():
    x = np.random.default_rng(1).normal(size=(4, 16))
    clean, _ = _chip()
    clean.calibrate(np.delete(x, 2, axis=0))
    x2 = x.copy()
    x2[2, 0] = np.nan
    chip, _ = _chip()
    y = chip.matmul(x2)
    assert chip.input_clip == clean.input_clip
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_calibration_batch_with_non_finite_values_is_refused_and_changes_nothing(bad):
    chip, _ = _chip()
    x = np.random.default_rng(1).normal(size=(4, 16))
    x[2, 5] = bad
    with pytest.raises(ValueError, match=r"NaN/inf.*row 2, input 5"):
        chip.calibrate(x)
    assert chip.input_clip is None and chip.adc_range is None


@pytest.mark.parametrize("cfg", [CFG, CrossbarConfig(device="ideal", adc_bits=8, input_clip=1.0)])
def test_all_zero_calibration_batch_is_refused(cfg):
    chip, _ = _chip(cfg=cfg)
    with pytest.raises(ValueError, match="all zeros"):
        chip.calibrate(np.zeros((4, 16)))
    with pytest.raises(ValueError, match="non-empty"):
        chip.calibrate(np.zeros((0, 16)))


def test_sparse_calibration_batch_keeps_a_range_that_covers_its_sums():
    """A batch whose partial sums are mostly zero (percentile 0) must not leave a 1-unit ADC range."""
    cfg = CrossbarConfig(device="ideal", adc_bits=8, adc_percentile=99.0)
    chip, w = _chip(cfg=cfg)
    x = np.zeros((200, 16))
    x[0] = np.random.default_rng(2).normal(size=16)  # one non-zero row in 200
    chip.calibrate(x)
    y = chip.matmul(x[:1])
    exact = matmul_quantized(chip, x[:1])
    assert np.abs(y - exact).max() <= 0.05 * np.abs(exact).max()


def test_nn_layer_calibration_on_nan_names_the_problem():
    layer = cim.CIMLinear(16, 4, config=CFG)
    x = torch.randn(8, 16)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        layer.calibrate(x)


@pytest.mark.parametrize("shape", [(0, 16), (8, 0), (0, 0), (16,), (2, 3, 4)])
def test_program_refuses_empty_or_non_matrix_weights(shape):
    with pytest.raises(ValueError, match=r"non-empty 2-D \(out, in\)"):
        program(np.zeros(shape), CFG, seed=0)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "3", True])
def test_program_names_a_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be an integer"):
        program(np.ones((2, 2)), CFG, seed=seed)


def test_program_accepts_the_full_seed_range():
    a = program(np.ones((2, 2)), CFG, seed=2**64 - 1)
    b = program(np.ones((2, 2)), CFG, seed=np.uint64(2**64 - 1))
    assert a.seed == b.seed == 2**64 - 1


@pytest.mark.parametrize("text,words", [
    ("[1]", "table of fields"),
    ('{"read_time_s": "nan"}', "read_time_s"),
    ('{"read_time_s": 1e999}', "read_time_s"),
    ('{"output_noise": "0.1"}', "output_noise"),
    ('{"read_noise": 1}', "read_noise"),
])
def test_crossbar_config_files_name_file_and_field(tmp_path, text, words):
    from cimsim.crossbar.config import ConfigError

    p = tmp_path / "xbar.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=words) as e:
        CrossbarConfig.load(p)
    assert str(p) in str(e.value)


def test_crossbar_config_load_of_a_folder_is_a_config_error(tmp_path):
    from cimsim.crossbar.config import ConfigError

    with pytest.raises(ConfigError, match="cannot read"):
        CrossbarConfig.load(tmp_path)


def test_pulse_model_and_cost_config_refuse_a_non_object():
    from cimsim.cost import CostConfig, CostError
    from cimsim.writeverify import PulseModel, WriteVerifyError

    with pytest.raises(CostError, match="JSON object"):
        CostConfig.from_json("[1]")
    with pytest.raises(WriteVerifyError, match="JSON object"):
        PulseModel.from_json("[1]")
    with pytest.raises(WriteVerifyError, match="cannot parse"):
        PulseModel.from_json("{")


def test_crossbar_config_json_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b"\xef\xbb\xbf" + CrossbarConfig(device="ideal", adc_bits=6).to_json().encode())
    assert CrossbarConfig.load(p).adc_bits == 6


@pytest.mark.parametrize("args,words", [(["-o", "{tmp}"], "--out"), (["-o", "{tmp}/f/x.csv"], "--out"),
                                        (["--threads", "0"], "--threads")])
def test_bench_checks_its_options_before_timing(tmp_path, capsys, args, words):
    from cimsim.bench.cli import main

    (tmp_path / "f").write_text("x")
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("text,words", [("a,b\n1,2\n", "missing column 'experiment'"), ("", "missing column"),
                                        (None, "no data rows"), ("bad_value", "line 2"), ("bad_range", "line 2")])
def test_pulse_calibration_names_file_and_line(tmp_path, capsys, text, words):
    from cimsim.writeverify.calibration import PULSE_STATS_COLUMNS, main

    header = ",".join(PULSE_STATS_COLUMNS) + "\n"
    good = "e,ispp,2,1,100,1000,2000,0.9," + ",".join(["1"] * 9) + "\n"
    body = {None: header, "bad_value": header + good.replace("0.9", "x"), "bad_range": header + good.replace("0.9", "1.5")}
    p = tmp_path / "stats.csv"
    p.write_text(body.get(text, text))
    assert main(["--csv", str(p), "--cells", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(p) in err and words in err, err
