"""One seed rule (cimsim.seeds): chip i of run s is the same chip in evaluation, write-verify and sweeps."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest

from cimsim import seeds
from training.evaluate import evaluate_chips, load_run
from training.programming import Policy, ProgrammingSetup, prepare_layers, program_chip
from training.sweep import main as sweep_main
from training.variation import crossbar_config
from training.writeverify_budget import RunSpec, load_model, run_device


def test_training_streams_keep_the_shipped_values():
    """The run streams are the ones every shipped result was trained with (pinned, not re-derived)."""
    ss = np.random.SeedSequence
    for s in (0, 1, 12345):
        assert seeds.run_stream_seed(s, seeds.SHUFFLE) == int(ss([s, 1]).generate_state(1)[0])
        assert seeds.run_stream_seed(s, seeds.TRAIN_NOISE) == int(ss([s, 2]).generate_state(2, np.uint64)[0])
        assert seeds.run_stream_seed(s, seeds.VALIDATION) == int(ss([s, 3]).generate_state(1)[0])
        assert seeds.run_stream_seed(s, seeds.SENSITIVITY) == int(ss([s, 7]).generate_state(1)[0])
    assert seeds.chip_seed(5, 3) == int(ss(5).spawn(4)[3].generate_state(1, dtype=np.uint64)[0])
    with pytest.raises(ValueError, match="unknown run stream"):
        seeds.run_stream_seed(0, 4)


def test_children_are_distinct_and_fit_int64():
    chips = seeds.chip_seeds(7, 50)
    layers = {seeds.layer_seed(c, k) for c in chips for k in range(4)}
    reads = {seeds.read_seed(c, n) for c in chips for n in range(4)}
    assert len(set(chips)) == 50 and len(layers) == 200 and len(reads) == 200 and not layers & reads
    assert all(0 <= v < 2**63 for v in layers | reads)


def test_chip_i_of_run_s_is_one_chip_in_evaluation_writeverify_and_sweep(tmp_path):
    out = tmp_path / "sw"
    assert sweep_main(["--model", "mlp", "--dataset", "digits", "--methods", "plain", "--sigmas", "1", "--seeds", "1",
                       "--epochs", "1", "--batch-size", "64", "--lr", "0.005", "--eval-chips", "2", "--val-chips", "1",
                       "--test-limit", "200", "--noise", "crossbar", "--device-model", "rram",
                       "--sigma-mode", "multiply", "--out", str(out), "--quiet"]) == 0
    run = out / "runs" / "plain_sigma1.0000_seed0"
    cfg, model, variation, test, dev = load_run(run)
    sweep_rows = list(csv.DictReader(open(run / "chips.csv")))
    assert [int(r["seed"]) for r in sweep_rows] == seeds.chip_seeds(cfg.seed, 2)

    # Evaluation: the same chips, re-made alone, give the sweep's per-chip accuracies.
    again = evaluate_chips(model, variation, test, cfg.eval_sigma_value, [1, 0], cfg.seed)
    assert again.accs == pytest.approx([float(sweep_rows[1]["accuracy"]), float(sweep_rows[0]["accuracy"])], abs=1e-6)

    # Write-verify (policy none) programs the very cells the evaluation's chip holds.
    dm = run_device(cfg, SimpleNamespace(device_model=None, sigma=None))
    assert dm == variation.device_models(variation.sigma_eff(cfg.eval_sigma_value))[0]
    setup = ProgrammingSetup(device_model=dm, crossbar=crossbar_config(cfg), t_read_s=cfg.read_time_s)
    float_model = load_model(RunSpec(run, cfg, dm, cfg.read_time_s), test.input_shape, test.num_classes, dev)
    layers = prepare_layers(float_model, setup)
    for i, c in enumerate(seeds.chip_seeds(cfg.seed, 2)):
        programmed = program_chip(layers, setup, Policy("none"), c).weights
        variation.chip(model, cfg.eval_sigma_value, c)
        cim = [m for _, m in variation.layers(model, heads=False)]
        assert len(cim) == len(layers)
        for la, layer in zip(layers, cim):
            arr = layer.chip()
            assert arr.seed == seeds.layer_seed(c, layers.index(la))
            np.testing.assert_array_equal(programmed[la.name].reshape(arr.n_out, -1), arr.effective_weights())
        assert i == 0 or not np.array_equal(programmed[layers[0].name], first)
        first = programmed[layers[0].name]
