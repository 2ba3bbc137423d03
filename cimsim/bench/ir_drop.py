"""IR-drop solver cost (``python -m cimsim.bench ir_drop``), measured in one run: the sparse nodal
specification, the conjugate-gradient fast path, the per-tile effective conductance matrix (built
once per programmed tile, by the Numba kernel and by its numpy twin) and a read through it, against
the IR-free product. Tiles of uniform 0-100 uS cells with random drives; 1 ohm wire segments,
ideal driver and sense. Tile sizes 64-512 (``--quick``: 64 and 128); the specification up to 256."""
from __future__ import annotations

import time

import numpy as np


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_ir_drop(sizes=(64, 128, 256), batch: int = 64, quiet: bool = False) -> list[dict[str, float]]:
    """One row per tile size: seconds per batch (spec extrapolated from 1 vector; up to 256), effective-matrix
    build, and ratios against the IR-free product."""
    from cimsim.crossbar.circuit import TileCircuit, effective_conductance_S, tile_currents, tile_currents_reference

    c = TileCircuit(r_row_segment_ohm=1.0, r_col_segment_ohm=1.0)
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        g, v = rng.uniform(0, 100e-6, (n, n)), rng.uniform(0, 0.2, (batch, n))
        ideal = _best(lambda: v @ g, 5)
        spec = _best(lambda: [tile_currents_reference(g, x, c) for x in v[:1]], 1) * batch if n <= 256 else float("nan")
        fast = _best(lambda: tile_currents(g, v, c), 1) if n <= 128 else float("nan")
        effective_conductance_S(g[:2, :2], c)  # compile
        t0 = time.perf_counter()
        a = effective_conductance_S(g, c)
        build = time.perf_counter() - t0
        build_np = _best(lambda: effective_conductance_S(g, c, kernel="numpy"), 1) if n <= 128 else float("nan")
        read = _best(lambda: v @ a, 5)
        r = dict(n=n, batch=batch, ideal_s=ideal, spec_s=spec, fast_s=fast, build_s=build, build_numpy_s=build_np,
                 read_s=read)
        rows.append(r)
        if not quiet:
            numpy_part = (f"numpy twin {build_np:.3g} s, fast path per batch {fast:.3g} s "
                          f"({spec / fast:.0f}x faster than the spec); " if n <= 128 else "")
            spec_part = f"spec {spec:.3g} s (extrapolated from 1 vector); " if n <= 256 else ""
            print(f"IR drop {n}x{n}, batch {batch}: {spec_part}"
                  f"{numpy_part}effective matrix built once in {build:.3g} s (Numba); then a read "
                  f"{read * 1e3:.3g} ms = {read / ideal:.2f}x the IR-free product")
    return rows


#: NeuroSim V1.3's 1T1R cell at 22 nm (docs/design.md, 'IR drop'): wire segments along the 4F and
#: 12F pitches and an access transistor of 0.25 x the 6 kohm on-resistance
LITERATURE_22NM = dict(r_row_segment_ohm=2.12, r_col_segment_ohm=6.36, r_access_ohm=1500.0)
TARGET_LAYER_RATIO = 1.5  # issue #20: a frozen chip's forward with IR drop / without
TARGET_STEP_RATIO = 3.0  # issue #20: a fresh-chip LeNet-5 training step with IR drop / without


def bench_ir_drop_layer(n: int = 1024, tile: int = 256, batch: int = 256, reps: int = 5,
                        log=print) -> list[dict[str, float]]:
    """A frozen chip's ``n x n`` layer of ``tile x tile`` tiles (8-bit weights on four 2-bit slices,
    8-bit calibrated ADC, NeuRRAM cells) with and without the 22 nm 1T1R interconnect of
    :data:`LITERATURE_22NM`, multi-bit and bit-serial DAC: programming once (IR drop: every tile's
    effective conductance matrix built) and the forward at ``batch``, interleaved, medians."""
    import torch

    from cimsim.bench.training_step import _interleaved
    from cimsim.crossbar.config import CrossbarConfig
    from cimsim.crossbar.mvm import crossbar_matmul_torch
    from cimsim.crossbar.program import program

    rng = np.random.default_rng(0)
    w = rng.normal(size=(n, n))
    x = torch.from_numpy(np.abs(rng.normal(size=(batch, n))).astype(np.float32))
    out = []
    for dac in ("multibit", "bit_serial"):
        base = CrossbarConfig(tile_rows=tile, tile_cols=tile, dac=dac, input_bits=8, weight_bits=8, bits_per_cell=2,
                              adc_bits=8, adc_range="calibrated", device="neurram")
        for c in (base, base.replace(**LITERATURE_22NM)):  # compile the kernels outside the timing
            crossbar_matmul_torch(program(w[:4, :4], c, 0), x[:2, :4])
        t0 = time.perf_counter()
        plain = program(w, base, 0)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        ir = program(w, base.replace(**LITERATURE_22NM), 0)
        t_ir = time.perf_counter() - t0
        t = _interleaved({"plain": lambda: crossbar_matmul_torch(plain, x),
                          "ir": lambda: crossbar_matmul_torch(ir, x)}, reps)
        tiles = -(-n // tile) * -(-(2 * base.n_slices * n) // tile)
        r = dict(n=n, tile=tile, batch=batch, dac=dac, tiles=tiles, program_s=t_plain, program_ir_s=t_ir,
                 forward_s=t["plain"], forward_ir_s=t["ir"], ratio=t["ir"] / t["plain"])
        out.append(r)
        log(f"IR drop, {n}x{n} layer of {tile}x{tile} tiles ({tiles} tiles), {dac} DAC, batch {batch}: programming "
            f"{t_plain:.3g} s without, {t_ir:.3g} s with IR drop ({(t_ir - t_plain) / tiles * 1e3:.3g} ms per tile build); "
            f"forward {t['plain'] * 1e3:.1f} ms without, {t['ir'] * 1e3:.1f} ms with: ratio {r['ratio']:.2f} "
            f"(target <= {TARGET_LAYER_RATIO:g}: {'ok' if r['ratio'] <= TARGET_LAYER_RATIO else 'MISSED'})")
    return out


def _solve_every_for(budget_s: float, solve_s: float, reuse_s: float) -> float:
    """The smallest ``n`` with ``(solve_s + (n - 1) reuse_s) / n <= budget_s``; inf when a step read
    through a solve already costs more than the budget."""
    if solve_s <= budget_s:
        return 1.0
    if reuse_s >= budget_s:
        return float("inf")
    return float(np.ceil((solve_s - reuse_s) / (budget_s - reuse_s)))


def bench_ir_drop_training_step(batch: int = 128, reps: int = 5, seed: int = 0, solve_every: int = 100,
                                lr: float = 1e-3, log=print) -> dict[str, float]:
    """A LeNet-5 training step (forward + backward) against a fresh chip every step (``fresh`` mode,
    :mod:`cimsim.bench.training_step`'s setup) with and without the interconnect of
    :data:`LITERATURE_22NM`, and plain torch; interleaved, medians. With IR drop: every chip solved
    exactly, and ``ir_fresh_solve_every = solve_every`` (per step: one solved step and
    ``solve_every - 1`` steps read through it, amortised). Then the error of that reuse
    at its stalest: ``solve_every - 1`` Adam steps (``lr``) after a solve, the next chip read through
    the old solve against the same chip solved, per layer as a fraction of the IR drop itself in
    the column currents of 64 random drives ``v`` in [0, 1] (``|v (A_reused - A)| / |v (G - A)|``,
    every slice and pair side, G the cells, A the effective conductances)."""
    import copy

    import torch

    from cimsim.bench.training_step import _interleaved, _mnist_like, _step, default_config, lenet5
    from cimsim.crossbar.program import program
    from cimsim.nn import CIMModule, calibrate, convert, set_mode
    from cimsim.nn.modules import fresh_seed

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    plain = lenet5()
    x, y = _mnist_like(batch, gen)
    models = {}
    wires = default_config().replace(**LITERATURE_22NM)
    for name, cfg in (("fresh", default_config()), ("fresh_ir", wires),
                      ("fresh_ir_reuse", wires.replace(ir_fresh_solve_every=solve_every))):
        m = convert(copy.deepcopy(plain), cfg, seed=seed)
        calibrate(m, [(x, y)], batches=1)
        models[name] = set_mode(m, "fresh")
    reuse = models.pop("fresh_ir_reuse")
    for layer in reuse.modules():  # the next draw of every layer solved; the timed steps read through it
        if isinstance(layer, CIMModule):
            layer._ir_solved = {}
    _step(reuse, x, y)()
    t = _interleaved({"plain": _step(plain, x, y), **{k: _step(m, x, y) for k, m in models.items()},
                      "fresh_ir_reuse": _step(reuse, x, y)}, reps)
    amortised = (t["fresh_ir"] + (solve_every - 1) * t["fresh_ir_reuse"]) / solve_every
    r = dict(batch=batch, plain_s=t["plain"], fresh_s=t["fresh"], fresh_ir_s=t["fresh_ir"],
             ratio=t["fresh_ir"] / t["fresh"], solve_every=solve_every, fresh_ir_reuse_s=t["fresh_ir_reuse"],
             fresh_ir_amortised_s=amortised, ratio_amortised=amortised / t["fresh"],
             solve_every_for_target=_solve_every_for(TARGET_STEP_RATIO * t["fresh"], t["fresh_ir"], t["fresh_ir_reuse"]))
    # the reuse error at its stalest: solve_every - 1 training steps after a solve
    layers = [m for m in reuse.modules() if isinstance(m, CIMModule)]
    for layer in layers:
        layer._ir_solved = {}
    opt = torch.optim.Adam(reuse.parameters(), lr=lr)
    for _ in range(solve_every - 1):
        _step(reuse, x, y)()
        opt.step()
    worst = 0.0
    for layer in layers:
        chip = layer.fresh_chip()  # the stalest draw: read through the solve of solve_every - 1 steps ago
        assert not chip.ir_exact
        exact = program(layer.weight_matrix().detach().double().numpy(), layer.config,
                        fresh_seed(layer.seed, layer.draw_count), device_model=layer.device_model())
        v = np.random.default_rng(seed).uniform(0, 1, (64, exact.n_in))  # drives in [0, 1] (any scale)
        num = sum(np.linalg.norm(v @ (a - b)) ** 2 for a, b in zip((chip.g_pos_S, chip.g_neg_S),
                                                                  (exact.g_pos_S, exact.g_neg_S)))
        den = sum(np.linalg.norm(v @ (a - b)) ** 2 for a, b in zip((exact.g_cells_pos_S, exact.g_cells_neg_S),
                                                                  (exact.g_pos_S, exact.g_neg_S)))
        worst = max(worst, float(np.sqrt(num / den)))
        log(f"   {type(layer).__name__} {tuple(layer.weight.shape)}: reused solve misses {100 * np.sqrt(num / den):.1f} % "
            f"of the IR drop")
    r["reuse_error_of_ir_drop"] = worst
    log(f"IR drop, LeNet-5 training step against a fresh chip, batch {batch}: plain torch {t['plain'] * 1e3:.1f} ms, "
        f"without IR drop {t['fresh'] * 1e3:.1f} ms, with (every chip solved) {t['fresh_ir'] * 1e3:.1f} ms: ratio "
        f"{r['ratio']:.2f} (target <= {TARGET_STEP_RATIO:g}: {'ok' if r['ratio'] <= TARGET_STEP_RATIO else 'MISSED'})")
    log(f"  solved every {solve_every} chips (ir_fresh_solve_every): a step between solves {t['fresh_ir_reuse'] * 1e3:.1f} ms, "
        f"amortised {amortised * 1e3:.1f} ms: ratio {r['ratio_amortised']:.2f} (target <= {TARGET_STEP_RATIO:g}: "
        f"{'ok' if r['ratio_amortised'] <= TARGET_STEP_RATIO else 'MISSED'}; the smallest such n within it: "
        f"{r['solve_every_for_target']:g}); after {solve_every - 1} Adam steps "
        f"(lr {lr:g}) the reused solve misses {100 * worst:.1f} % of the IR drop (worst layer)")
    return r
