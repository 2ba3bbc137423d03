"""IR-drop solver cost (``python -m cimsim.bench ir_drop``), measured in one run: the sparse nodal
specification, the conjugate-gradient fast path, and a read through the per-tile effective
conductance matrix, against the IR-free product. Tiles of uniform 0-100 uS cells with random drives;
1 ohm wire segments, ideal driver and sense."""
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


def bench_ir_drop(sizes=(64, 128), batch: int = 64, quiet: bool = False) -> list[dict[str, float]]:
    """One row per tile size: seconds per batch (spec extrapolated from 2 vectors), effective-matrix
    build, and ratios against the IR-free product."""
    from cimsim.crossbar.circuit import TileCircuit, effective_conductance_S, tile_currents, tile_currents_reference

    c = TileCircuit(r_row_segment_ohm=1.0, r_col_segment_ohm=1.0)
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        g, v = rng.uniform(0, 100e-6, (n, n)), rng.uniform(0, 0.2, (batch, n))
        ideal = _best(lambda: v @ g, 5)
        spec = _best(lambda: [tile_currents_reference(g, x, c) for x in v[:2]], 1) / 2 * batch
        fast = _best(lambda: tile_currents(g, v, c), 1)
        t0 = time.perf_counter()
        a = effective_conductance_S(g, c)
        build = time.perf_counter() - t0
        read = _best(lambda: v @ a, 5)
        r = dict(n=n, batch=batch, ideal_s=ideal, spec_s=spec, fast_s=fast, build_s=build, read_s=read)
        rows.append(r)
        if not quiet:
            print(f"IR drop {n}x{n}, batch {batch}: spec {spec:.3g} s, fast path {fast:.3g} s "
                  f"({spec / fast:.0f}x faster than the spec), effective matrix built once in {build:.3g} s, "
                  f"then a read {read * 1e3:.3g} ms = {read / ideal:.2f}x the IR-free product")
    return rows
