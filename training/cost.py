"""Energy, latency and area per inference of a trained run on a simulated chip, beside its accuracy.

``python -m training.cost --run RUN [--set FIELD=VALUE ...] [--images N] [--chip I] [--chip-config F]
[--technology T] [--columns-per-adc N] [--t-read-s S] [--out DIR]``

Loads the run on the crossbar backend (``noise=crossbar`` unless ``--set`` says otherwise; any
evaluation override of :mod:`training.evaluate`, e.g. ``adc_bits``, ``dac``, ``bits_per_cell``,
``crossbar_config`` for the tile size), programs chip ``I`` of the run (the chip
``python -m training.evaluate`` calls chip ``I``), runs the first ``N`` test images through it
while :func:`cimsim.cost.recording` counts what every crossbar layer does, and prices the counts
(:func:`cimsim.cost.price`) with the chip cost config. Writes into ``--out`` (default
``RUN/cost``), all or nothing: ``cost.txt`` (the table), ``cost.csv`` (per layer and total),
``cost.json`` (summary, layers, counts, technology, accuracy on those images) and
``chip_cost_config.toml`` + ``eval_overrides.json`` (what it ran with).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from cimsim.cost import ChipCostConfig, CostError, price, recording
from cimsim.seeds import chip_seed

from .cli import Parser, UsageError


def run_cost(run_dir: str | Path, overrides: dict, chip: ChipCostConfig, images: int = 100, chip_index: int = 0):
    """``(InferenceCost, accuracy on the priced images, evaluated RunConfig)`` of chip ``chip_index``."""
    from .evaluate import load_run

    cfg, model, variation, test, dev = load_run(run_dir, "cpu", overrides)
    n = min(int(images), len(test))
    the_chip = variation.chip(model, cfg.eval_sigma_value, chip_seed(cfg.seed, chip_index))
    correct = 0
    model.eval()
    with recording(model, chip.accumulator_bits) as acts, torch.no_grad():
        for k in range(0, n, cfg.eval_batch_size):
            x, y = test.batch(torch.arange(k, min(n, k + cfg.eval_batch_size)), dev)
            logits = variation.forward_chip(model, the_chip, x)
            correct += int((logits.argmax(1) == y).sum())
    return price(list(acts.values()), chip), correct / n, cfg


def main(argv: list[str] | None = None) -> int:
    from cimsim.crossbar.circuit import CircuitNotConverged
    from cimsim.device.model import DeviceModelError
    from cimsim.io import OutputError, write_outputs

    from .data import DataError
    from .evaluate import parse_overrides
    from .run_config import ConfigError
    from .runfolder import RunFolderError, check_output_dir
    from .variation import VariationError

    p = Parser(prog="python -m training.cost",
               description="Energy, latency and area per inference of a trained run on a simulated chip.")
    p.add_argument("--run", required=True, help="finished run folder (config.json, best.pt)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="evaluation override (as python -m training.evaluate --set); noise=crossbar is implied")
    p.add_argument("--images", type=int, default=100, help="test images priced (default 100)")
    p.add_argument("--chip", type=int, default=0, help="which chip of the run (default 0)")
    p.add_argument("--chip-config", default=None, help="ChipCostConfig TOML/JSON (default: the defaults)")
    p.add_argument("--technology", default=None, help="technology preset (isaac32, survey22) or JSON file")
    p.add_argument("--columns-per-adc", type=int, default=None, help="converted columns sharing one ADC")
    p.add_argument("--t-read-s", type=float, default=None, help="array read time per cycle (s)")
    p.add_argument("--out", default=None, help="output folder (default RUN/cost)")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    ns = p.parse_args(argv)
    out = Path(ns.out) if ns.out else Path(ns.run) / "cost"
    try:
        if ns.images < 1 or ns.chip < 0:
            raise UsageError("--images must be >= 1 and --chip >= 0")
        if not (Path(ns.run) / "best.pt").is_file() or not (Path(ns.run) / "config.json").is_file():
            raise UsageError(f"--run {ns.run}: no best.pt and config.json (not a finished training run folder)")
        chip = ChipCostConfig.load(ns.chip_config) if ns.chip_config else ChipCostConfig()
        changes = {k: v for k, v in (("technology", ns.technology), ("columns_per_adc", ns.columns_per_adc),
                                     ("t_read_s", ns.t_read_s)) if v is not None}
        try:
            chip = chip.replace(**changes)
        except CostError as e:
            raise UsageError(str(e).replace("ChipCostConfig.", "--").replace("_", "-")) from None
        chip.tech  # a bad technology fails here, before the run loads
        check_output_dir(out)
        overrides = parse_overrides(["noise=crossbar", *ns.set])
        cost, acc, cfg = run_cost(ns.run, overrides, chip, ns.images, ns.chip)
        result = {"run": str(ns.run), "chip": ns.chip, "images_priced": cost.images, "accuracy": acc,
                  **cost.to_dict()}
        write_outputs({
            out / "cost.txt": cost.table() + "\n",
            out / "cost.csv": cost.to_csv(),
            out / "cost.json": json.dumps(result, indent=1) + "\n",
            out / "chip_cost_config.toml": chip.to_toml(),
            out / "eval_overrides.json": json.dumps(overrides, indent=1) + "\n",
        })
    except (UsageError, ConfigError, CostError, RunFolderError, DataError, VariationError, DeviceModelError,
            CircuitNotConverged, OutputError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if not ns.quiet:
        print(cost.table())
        print(f"accuracy on the {cost.images} priced test images (chip {ns.chip}): {100 * acc:.2f} %; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
