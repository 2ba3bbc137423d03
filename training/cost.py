"""Energy, latency and area per inference of a trained run on a simulated chip, beside its accuracy.

``python -m training.cost --run RUN [--set FIELD=VALUE ...] [--images N] [--chips K] [--pareto]
[--sigma S] [--write-verify-tol-uS T [--amortise N]] [--chip-config F] [--technology T] [--columns-per-adc N]
[--t-read-s S] [--out DIR]``

Loads the run on the crossbar backend (``noise=crossbar`` unless ``--set`` says otherwise; any
evaluation override of :mod:`training.evaluate`, e.g. ``adc_bits``, ``dac``, ``bits_per_cell``,
``crossbar_config`` for the tile size), programs chips ``0..K-1`` of the run (as
``python -m training.evaluate`` numbers them), runs the first ``N`` test images through each
while :func:`cimsim.cost.recording` counts what every crossbar layer does, and prices the counts
(:func:`cimsim.cost.price`) with the chip cost config. Writes into ``--out`` (default
``RUN/cost``), all or nothing: ``cost.txt`` (the table), ``cost.csv`` (per layer and total),
``cost.json`` (summary, layers, counts, technology, accuracy per chip) and
``chip_cost_config.toml`` + ``eval_overrides.json`` (what it ran with). ``--pareto`` instead
repeats that for every variant of :data:`PARETO_AXES` (one axis at a time around the run's
settings) into ``pareto.csv``, ``pareto.json``, ``pareto.png`` and the tile configs used.
``--tiles`` / ``--dacs`` narrow those axes; a ``--pareto`` that stops (killed, out of memory)
keeps its finished variants in ``DIR/.pareto_progress.jsonl`` and the same command resumes.
``--write-verify-tol-uS`` adds the energy and latency of programming chip 0 with full write-verify
(ISPP, :mod:`training.programming`) and that energy spread over ``--amortise`` inferences.
``--set bn_recal_images=N`` recalibrates each chip's BatchNorm statistics on N training images
before its test images (as ``training.evaluate`` does); those forwards are priced apart
(``bn_recal`` in ``cost.json``), not as inferences.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cimsim.cost import ChipCostConfig, Cost, CostError, check_priceable, price, recording
from cimsim.io import sha256_file
from cimsim.seeds import chip_seed

from .cli import Parser, UsageError


def run_cost(run_dir: str | Path, overrides: dict, chip: ChipCostConfig, images: int = 100,
             chips: Sequence[int] = (0,), write_verify_tol_S: float | None = None, sigma: float | None = None,
             quiet: bool = True, label: str = "cost"):
    """``(InferenceCost, accuracy per chip, evaluated RunConfig, programming Cost or None,
    recalibration dict or None)``: chips ``chips`` of the run (as ``python -m training.evaluate``
    numbers them) each read the first ``images`` test images; the cost is per inference over all of
    them (array energy follows each chip's conductances). ``write_verify_tol_S``: also the energy and
    latency of programming the first chip with full write-verify (ISPP) to that tolerance
    (:func:`programming_cost`). ``sigma``: the variation of the chips (default: the run's eval
    sigma). With ``bn_recal_images`` (an override) and a model with BatchNorm, every chip first
    recomputes its BatchNorm statistics from that many training images run through it, as
    ``training.evaluate`` does; those forwards are priced apart (the dict: images per chip and
    the energy and the pipelined latency of running them on one chip), never in the per-inference
    cost. Unless ``quiet``, progress on stderr as ``label`` in forward batches (per chip its
    recalibration's and the test's), then the write-verify."""
    from cimsim.progress import Progress

    from .evaluate import batchnorm_layers, load_run, load_splits, recalibrated_batchnorm, recalibration_images

    # an unpriced ADC or DAC fails before the crossbar's calibration and the evaluation
    cfg, model, variation, test, dev = load_run(run_dir, "cpu", overrides, check=lambda m: check_priceable(m, chip))
    sigma = cfg.eval_sigma_value if sigma is None else float(sigma)
    n = min(int(images), len(test))
    recal_x = (recalibration_images(load_splits(cfg)[0], cfg.bn_recal_images, dev)
               if cfg.bn_recal_images and batchnorm_layers(model) else None)
    model.eval()
    accs, totals, recal_totals = [], {}, {}
    batches = -(-n // cfg.eval_batch_size)
    recal_batches = 0 if recal_x is None else -(-int(recal_x.shape[0]) // cfg.eval_batch_size)
    steps = len(chips) * (batches + recal_batches) + (write_verify_tol_S is not None)
    with torch.no_grad(), Progress(steps, f"{label}: chip batches" + (", write-verify" if write_verify_tol_S
                                                                       is not None else ""), quiet=quiet) as bar:
        for c in chips:
            the_chip = variation.chip(model, sigma, chip_seed(cfg.seed, int(c)))

            def forward(x, the_chip=the_chip):
                return variation.forward_chip(model, the_chip, x)

            with contextlib.ExitStack() as stack:
                if recal_x is not None:
                    with recording(model, chip.accumulator_bits) as recal_acts:
                        stack.enter_context(recalibrated_batchnorm(model, forward, recal_x, cfg.eval_batch_size))
                    _add_activity(recal_totals, recal_acts)
                    bar.update(recal_batches, note=f"chip {c} recalibrated")
                with recording(model, chip.accumulator_bits) as acts:
                    correct = 0
                    for k in range(0, n, cfg.eval_batch_size):
                        x, y = test.batch(torch.arange(k, min(n, k + cfg.eval_batch_size)), dev)
                        correct += int((forward(x).argmax(1) == y).sum())
                        bar.update(note=f"chip {c}")
                _add_activity(totals, acts)
            accs.append(correct / n)
        prog = None
        if write_verify_tol_S is not None:
            prog = programming_cost(model, variation, sigma, write_verify_tol_S, chip_seed(cfg.seed, int(chips[0])))
            bar.update(note="write-verify")
    recal = None
    if recal_totals:
        rc = price(list(recal_totals.values()), chip).summary()
        per_chip = int(recal_x.shape[0])
        recal = {"images_per_chip": per_chip, "chips": len(chips),
                 "energy_per_chip_J": rc["energy_J"] * per_chip,
                 "latency_per_chip_s": rc["latency_s"] + (per_chip - 1) * rc["interval_s"]}
    return price(list(totals.values()), chip), accs, cfg, prog, recal


def _add_activity(totals: dict, acts: Mapping) -> None:
    """Add one chip's recorded layer activities (name -> LayerActivity) into ``totals``."""
    for name, a in acts.items():
        totals[name] = totals[name] + a if name in totals else a


def programming_cost(model, variation, sigma: float, tol_S: float, seed: int):
    """:class:`cimsim.cost.Cost` of programming every backbone crossbar layer of ``model`` once with
    full write-verify (ISPP, ``tol_S`` siemens, the backend's device model at ``sigma`` and its read
    time; :mod:`training.programming`)."""
    from .programming import Policy, ProgrammingSetup, prepare_layers, program_chip

    device = variation.device_models(variation.sigma_eff(sigma))[0]
    xb = variation.config
    setup = ProgrammingSetup(device_model=device, crossbar=xb, t_read_s=xb.read_time_s)
    return program_chip(prepare_layers(model, setup), setup, Policy("full", tol_S), seed).cost.total


#: where ``--pareto`` keeps finished variants until its results are written (rerun to resume)
PROGRESS_FILE = ".pareto_progress.jsonl"

# The hardware choices of the accuracy-vs-energy study, one at a time around the run's own settings.
PARETO_AXES = {"adc_bits": (4, 5, 6, 7, 8, 9, 10), "bits_per_cell": (1, 2, 3, 4), "tile": (64, 128, 256, 512),
               "dac": ("multibit", "bit_serial")}


def pareto_variants(base: dict, axes: Mapping[str, Sequence] = PARETO_AXES) -> list[dict]:
    """One dict of settings per variant: ``base`` (adc_bits, bits_per_cell, tile, dac) with one axis
    changed at a time; the base itself once."""
    out, seen = [], set()
    for axis, values in axes.items():
        for v in values:
            var = {**base, axis: v}
            key = tuple(sorted(var.items()))
            if key not in seen:
                seen.add(key)
                out.append({"varied": axis if v != base[axis] else "base", **var})
    return out


def _variant_label(v: Mapping) -> str:
    """``"adc 6, 2 b/cell, tile 256, multibit DAC"``: one :func:`pareto_variants` variant, for progress."""
    return f"adc {v['adc_bits']}, {v['bits_per_cell']} b/cell, tile {v['tile']}, {v['dac']} DAC"


def run_pareto(run_dir: str | Path, out: Path, base_overrides: dict, chip: ChipCostConfig, images: int,
               chips: Sequence[int], quiet: bool = False, write_verify_tol_S: float | None = None,
               amortise: float = 1e6, sigma: float | None = None, axes: Mapping[str, Sequence] = PARETO_AXES,
               progress: Path | None = None) -> tuple[list[dict], dict[Path, bytes | str]]:
    """Accuracy (mean, std over ``chips``) and cost per inference of every :func:`pareto_variants`
    variant around the run's settings under ``base_overrides``; returns the rows and the files to
    write (the tile configs used, CSV, JSON, plot). A variant the chip cannot hold (more bits per
    cell than the device has levels) is listed under ``skipped`` in the JSON with the reason.
    ``write_verify_tol_S``: each row also gets the energy of programming the chip with full
    write-verify (once per bits-per-cell setting; the other axes do not change the cells) and that
    energy over ``amortise`` inferences. ``progress``: a JSON-lines file that gets every finished
    variant as it finishes; a later call with the same settings takes those from it instead of
    running them again (the caller removes it once the results are written)."""
    import tempfile

    from cimsim.progress import Progress

    from .evaluate import eval_config
    from .run_config import RunConfig
    from .variation import VariationError, crossbar_config

    cfg = eval_config(RunConfig.load(Path(run_dir) / "config.json"), base_overrides)
    base_crossbar = crossbar_config(cfg)
    base = {"adc_bits": base_crossbar.adc_bits, "bits_per_cell": base_crossbar.bits_per_cell,
            "tile": base_crossbar.tile_rows, "dac": base_crossbar.dac}

    rows, skipped, files, programmed = [], [], {}, {}
    variants = pareto_variants(base, axes)
    # the run's absolute path (the same run resumes whether named relative or absolute) and its
    # weights (a run trained again in the same folder does not)
    context = {"run": str(Path(run_dir).resolve()), "weights_sha256": sha256_file(Path(run_dir) / "best.pt"),
               "crossbar": base_crossbar.to_dict(),  # a crossbar_config file's contents, not its name
               "overrides": base_overrides, "chip": chip.to_dict(), "images": images,
               "chips": list(chips), "sigma": sigma, "write_verify_tol_S": write_verify_tol_S}
    done = _read_progress(progress, context)
    with Progress(len(variants), "pareto: variants", quiet=quiet) as bar, tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            key = json.dumps(v, sort_keys=True)
            if key in done:  # finished by an earlier call with the same settings
                entry = done[key]
                (rows if "row" in entry else skipped).append(entry.get("row") or entry["skipped"])
                if "row" in entry and "write_verify_J" in entry["row"]:
                    programmed[v["bits_per_cell"]] = Cost(entry["row"]["write_verify_J"], entry["row"]["write_verify_s"])
                    rows[-1]["write_verify_per_inference_J"] = rows[-1]["write_verify_J"] / amortise  # this call's N
                files[out / "tiles" / f"tile{v['tile']}.toml"] = \
                    base_crossbar.replace(tile_rows=v["tile"], tile_cols=v["tile"]).to_toml()
                bar.update(1)
                continue
            text = base_crossbar.replace(tile_rows=v["tile"], tile_cols=v["tile"]).to_toml()
            files[out / "tiles" / f"tile{v['tile']}.toml"] = text  # written with the results
            loaded = Path(tmp) / f"tile{v['tile']}.toml"  # what the run loads meanwhile
            loaded.write_text(text)
            ov = {**base_overrides, "adc_bits": v["adc_bits"], "bits_per_cell": v["bits_per_cell"], "dac": v["dac"],
                  "crossbar_config": str(loaded)}
            tol = write_verify_tol_S if v["bits_per_cell"] not in programmed else None
            try:
                cost, accs, _, prog, recal = run_cost(run_dir, ov, chip, images, chips, tol, sigma, quiet,
                                                      f"pareto: {_variant_label(v)}")
            except VariationError as e:  # e.g. more bits per cell than the device has levels
                skipped.append({**v, "reason": str(e)})
                _append_progress(progress, context, key, {"skipped": skipped[-1]})
                bar.update(1)
                continue
            if prog is not None:
                programmed[v["bits_per_cell"]] = prog
            acc = np.asarray(accs)
            s = cost.summary()
            rows.append({**v, "acc_mean": float(acc.mean()), "acc_std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
                         "chips": acc.size, "images": images, **{k: s[k] for k in
                         ("energy_J", "latency_s", "interval_s", "area_mm2", "tops_per_W", "tops_per_mm2")},
                         "adc_share": cost.rows()[-1]["e_adc_J"] / cost.rows()[-1]["energy_J"]})
            if write_verify_tol_S is not None:
                wv = programmed[v["bits_per_cell"]]
                rows[-1].update(write_verify_J=wv.energy_J, write_verify_s=wv.latency_s,
                                write_verify_per_inference_J=wv.energy_J / amortise)
            if recal is not None:
                rows[-1].update(bn_recal_images_per_chip=recal["images_per_chip"],
                                bn_recal_energy_per_chip_J=recal["energy_per_chip_J"])
            _append_progress(progress, context, key, {"row": rows[-1]})
            bar.update(1)
    if not rows:
        raise CostError(f"no variant could be configured: {skipped[0]['reason'] if skipped else 'none'}")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    files[out / "pareto.csv"] = buf.getvalue()
    record = {"run": str(run_dir), "base": base, "crossbar": base_crossbar.to_dict(), "chips": list(chips),
              "images": images, "sigma": sigma, "chip_cost_config": chip.to_dict(),
              "write_verify": None if write_verify_tol_S is None else
              {"policy": "full", "algorithm": "ispp", "tolerance_S": write_verify_tol_S,
               "amortised_over_inferences": amortise},
              "eval_overrides": base_overrides, "rows": rows, "skipped": skipped}
    files[out / "pareto.json"] = json.dumps(record, indent=1) + "\n"
    files[out / "pareto.png"] = pareto_plot(rows, f"{Path(run_dir).name}: accuracy vs energy per inference "
                                                  f"({chip.technology}, {len(chips)} chips x {images} images)")
    return rows, files


def _read_progress(path: Path | None, context: dict) -> dict[str, dict]:
    """Variant key -> finished entry, from the lines of ``path`` made with ``context`` (others and
    damaged lines are ignored)."""
    out: dict[str, dict] = {}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(e, dict) and e.get("context") == json.loads(json.dumps(context)) and "key" in e:
            out[e["key"]] = e
    return out


def _append_progress(path: Path | None, context: dict, key: str, entry: dict) -> None:
    """One finished variant appended to ``path`` as a whole line, synced."""
    import os

    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        cut = False  # the last line was cut short by a kill: end it, so this entry is not glued onto it
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
        fh.write((("\n" if cut else "") + json.dumps({"context": context, "key": key, **entry}) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def pareto_front(rows: Sequence[Mapping]) -> list[Mapping]:
    """The rows no other row beats on both energy (lower) and mean accuracy (higher)."""
    return [r for r in rows if not any(o["energy_J"] <= r["energy_J"] and o["acc_mean"] >= r["acc_mean"]
                                       and (o["energy_J"], o["acc_mean"]) != (r["energy_J"], r["acc_mean"])
                                       for o in rows)]


def pareto_plot(rows: Sequence[Mapping], title: str) -> bytes:
    """PNG: accuracy (mean +- std over chips) against energy per inference, one colour per axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    label = {"adc_bits": "ADC bits {}", "bits_per_cell": "{} bit/cell", "tile": "tile {}", "dac": "{} DAC"}
    for i, axis in enumerate(["base", *PARETO_AXES]):
        sel = [r for r in rows if r["varied"] == axis]
        if not sel:
            continue
        ax.errorbar([r["energy_J"] * 1e9 for r in sel], [100 * r["acc_mean"] for r in sel],
                    yerr=[100 * r["acc_std"] for r in sel], fmt="o*"[axis == "base"], ms=6 + 6 * (axis == "base"),
                    capsize=2, color=f"C{i}", label=axis)
        for r in sel:
            txt = "base" if axis == "base" else label[axis].format(r[axis])
            ax.annotate(txt, (r["energy_J"] * 1e9, 100 * r["acc_mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    front = sorted(pareto_front(rows), key=lambda r: r["energy_J"])
    ax.plot([r["energy_J"] * 1e9 for r in front], [100 * r["acc_mean"] for r in front], "k--", lw=0.8,
            label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("energy per inference (nJ)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


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
    p.add_argument("--images", type=int, default=100, help="test images per chip (default 100)")
    p.add_argument("--chips", type=int, default=1, help="chips 0..K-1 of the run (default 1)")
    p.add_argument("--pareto", action="store_true",
                   help="accuracy and cost over ADC bits 4-10, bits/cell 1-4, tiles 64-512 and both DACs, one at a "
                        "time around the run's settings: pareto.csv, pareto.json, pareto.png")
    p.add_argument("--sigma", type=float, default=None, help="variation of the chips (default: the run's eval sigma)")
    p.add_argument("--write-verify-tol-uS", type=float, default=None,
                   help="also price programming the chip with full write-verify (ISPP) to this tolerance (uS)")
    p.add_argument("--amortise", type=float, default=1e6,
                   help="inferences the programming energy is spread over (default 1e6)")
    p.add_argument("--tiles", default=None,
                   help="--pareto: comma list of square tile sizes (default 64,128,256,512; the simulator's memory "
                        "grows as 1/tile on large convolutions)")
    p.add_argument("--dacs", default=None, help="--pareto: comma list of DAC modes (default multibit,bit_serial)")
    p.add_argument("--chip-config", default=None, help="ChipCostConfig TOML/JSON (default: the defaults)")
    p.add_argument("--technology", default=None, help="technology preset (isaac32, survey22) or JSON file")
    p.add_argument("--columns-per-adc", type=int, default=None, help="converted columns sharing one ADC")
    p.add_argument("--t-read-s", type=float, default=None, help="array read time per cycle (s)")
    p.add_argument("--out", default=None, help="output folder (default RUN/cost)")
    p.add_argument("--quiet", action="store_true", help="no table or progress")
    ns = p.parse_args(argv)
    out = Path(ns.out) if ns.out else Path(ns.run) / "cost"
    try:
        if ns.images < 1 or ns.chips < 1:
            raise UsageError("--images and --chips must be >= 1")
        if not (np.isfinite(ns.amortise) and ns.amortise >= 1):
            raise UsageError(f"--amortise must be a finite number >= 1, got {ns.amortise}")
        tol = ns.write_verify_tol_uS
        if tol is not None and not (np.isfinite(tol) and tol > 0):
            raise UsageError(f"--write-verify-tol-uS must be a finite number > 0, got {tol}")
        tol_S = None if tol is None else tol * 1e-6
        axes = dict(PARETO_AXES)
        if ns.tiles is not None:
            try:
                axes["tile"] = tuple(int(t) for t in ns.tiles.split(","))
            except ValueError:
                raise UsageError(f"--tiles must be a comma list of integers, got {ns.tiles!r}") from None
            if not axes["tile"] or any(t < 2 for t in axes["tile"]):
                raise UsageError(f"--tiles must list sizes >= 2, got {ns.tiles!r}")
        if ns.dacs is not None:
            axes["dac"] = tuple(d.strip() for d in ns.dacs.split(","))
            if not set(axes["dac"]) <= set(PARETO_AXES["dac"]):
                raise UsageError(f"--dacs must list {' and/or '.join(PARETO_AXES['dac'])}, got {ns.dacs!r}")
        if ns.sigma is not None and not (np.isfinite(ns.sigma) and ns.sigma >= 0):
            raise UsageError(f"--sigma must be a finite number >= 0, got {ns.sigma}")
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
        chips = range(ns.chips)
        files: dict[Path, bytes | str] = {out / "chip_cost_config.toml": chip.to_toml(),
                                          out / "eval_overrides.json": json.dumps(overrides, indent=1) + "\n"}
        if ns.pareto:
            progress = out / PROGRESS_FILE
            rows, more = run_pareto(ns.run, out, overrides, chip, ns.images, chips, ns.quiet, tol_S, ns.amortise,
                                    ns.sigma, axes, progress)
            files.update(more)
        else:
            cost, accs, cfg, prog, recal = run_cost(ns.run, overrides, chip, ns.images, chips, tol_S, ns.sigma,
                                                    ns.quiet)
            result = {"run": str(ns.run), "chips": list(chips), "images_per_chip": ns.images,
                      "sigma": cfg.eval_sigma_value if ns.sigma is None else ns.sigma,
                      "accuracy_per_chip": accs, "accuracy": float(np.mean(accs)), **cost.to_dict()}
            if prog is not None:
                result["write_verify"] = {"policy": "full", "algorithm": "ispp", "tolerance_S": tol_S,
                                          "chip": 0, **prog.to_dict(), "amortised_over_inferences": ns.amortise,
                                          "energy_per_inference_J": prog.energy_J / ns.amortise}
            if recal is not None:
                result["bn_recal"] = recal
            files.update({out / "cost.txt": cost.table() + "\n", out / "cost.csv": cost.to_csv(),
                          out / "cost.json": json.dumps(result, indent=1) + "\n"})
        write_outputs(files)
        if ns.pareto:
            progress.unlink(missing_ok=True)
    except (UsageError, ConfigError, CostError, RunFolderError, DataError, VariationError, DeviceModelError,
            CircuitNotConverged, OutputError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if not ns.quiet:
        if ns.pareto:
            for r in json.loads(files[out / "pareto.json"])["skipped"]:
                print(f"skipped: {r['varied']} {r[r['varied']]}: {r['reason']}")
            for r in rows:
                wv = (f"  write-verify {r['write_verify_per_inference_J'] * 1e9:.4f} nJ/inference"
                      if "write_verify_J" in r else "")
                print(f"{r['varied']:>14} adc {r['adc_bits']:>2} b/cell {r['bits_per_cell']} tile {r['tile']:>3} "
                      f"{r['dac']:<10} acc {100 * r['acc_mean']:6.2f} +- {100 * r['acc_std']:5.2f} %  "
                      f"{r['energy_J'] * 1e9:10.2f} nJ  {r['area_mm2']:8.3f} mm^2{wv}")
        else:
            print(cost.table())
            print(f"accuracy on {ns.images} test images per chip, {ns.chips} chip(s): {100 * np.mean(accs):.2f} %")
            if prog is not None:
                print(f"programming (full write-verify, ISPP, {tol:g} uS): {prog.energy_J * 1e6:.3f} uJ, "
                      f"{prog.latency_s:.3f} s; over {ns.amortise:g} inferences {prog.energy_J / ns.amortise * 1e9:.4f} "
                      "nJ per inference")
            if recal is not None:
                print(f"per-chip BatchNorm recalibration: {recal['images_per_chip']} training images per chip, "
                      f"{recal['energy_per_chip_J'] * 1e6:.3f} uJ and {recal['latency_per_chip_s'] * 1e3:.3f} ms "
                      "per chip (not in the per-inference cost)")
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
