"""IR-drop solver cost (``python -m cimsim.bench ir_drop``), measured in one run: the sparse nodal
specification, the conjugate-gradient fast path, the per-tile effective conductance matrix (built
once per programmed tile, by the Numba kernel and by its numpy twin) and a read through it, against
the IR-free product. Tiles of uniform 0-100 uS cells with random drives; 1 ohm wire segments,
ideal driver and sense. Tile sizes 64-256 (``--quick``: 64 and 128; 512 with ``sizes``)."""
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
    """One row per tile size: seconds per batch (spec extrapolated from 2 vectors), effective-matrix
    build, and ratios against the IR-free product."""
    from cimsim.crossbar.circuit import TileCircuit, effective_conductance_S, tile_currents, tile_currents_reference

    c = TileCircuit(r_row_segment_ohm=1.0, r_col_segment_ohm=1.0)
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        g, v = rng.uniform(0, 100e-6, (n, n)), rng.uniform(0, 0.2, (batch, n))
        ideal = _best(lambda: v @ g, 5)
        spec = _best(lambda: [tile_currents_reference(g, x, c) for x in v[:1]], 1) * batch
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
            print(f"IR drop {n}x{n}, batch {batch}: spec {spec:.3g} s (extrapolated from 1 vector); "
                  f"{numpy_part}effective matrix built once in {build:.3g} s (Numba); then a read "
                  f"{read * 1e3:.3g} ms = {read / ideal:.2f}x the IR-free product")
    return rows
