"""The IR-drop specification (cimsim.crossbar.circuit): the nodal solve of a tile checked against
closed forms, Kirchhoff's current law, power balance, node numbering and monotonicity."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimsim.crossbar.circuit import (
    CircuitError, TileCircuit, cell_conductance_S, solve_nodes, tile_currents_reference, tile_network,
)

RESISTANCES = ("r_row_segment_ohm", "r_col_segment_ohm", "r_driver_ohm", "r_sense_ohm", "r_access_ohm")


@st.composite
def tiles(draw, max_side: int = 6):
    rows = draw(st.integers(1, max_side))
    cols = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    g = rng.uniform(0, 100e-6, (rows, cols)) * (rng.random((rows, cols)) > 0.2)  # some cells at 0 S
    v = rng.uniform(0, 0.3, rows)
    return g, v


@st.composite
def circuits(draw, zero_ok: bool = True):
    vals = {}
    for name in RESISTANCES:
        r = draw(st.sampled_from([0.0, 0.5, 2.5, 20.0, 1000.0]) if zero_ok else st.sampled_from([0.5, 2.5, 20.0, 1000.0]))
        vals[name] = r
    return TileCircuit(**vals, drive_end=draw(st.sampled_from(["first", "last"])),
                       sense_end=draw(st.sampled_from(["first", "last"])))


def _solve(g, v, c, order=None):
    n, edges, ix = tile_network(g, c)
    fixed = {ix["src"][i]: float(v[i]) for i in range(g.shape[0])}
    fixed[ix["ground"]] = 0.0
    return solve_nodes(n, edges, fixed, order), edges, fixed


@settings(max_examples=60, deadline=None)
@given(tiles())
def test_zero_resistance_is_the_ideal_product_exactly(tile):
    g, v = tile
    assert np.array_equal(tile_currents_reference(g, v, TileCircuit()), g.T @ v)


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-7, 1e-3), st.floats(0.01, 1.0), circuits())
def test_one_cell_is_the_closed_form_divider(g, v, c):
    want = v / (c.r_driver_ohm + c.r_access_ohm + 1 / g + c.r_sense_ohm)
    got = tile_currents_reference(np.array([[g]]), np.array([v]), c)[0]
    assert got == pytest.approx(want, rel=1e-12)


def test_one_row_two_cells_is_the_ladder_by_hand():
    g1, g2, r, v = 50e-6, 80e-6, 1e3, 0.2  # driver at cell 1, one wire segment to cell 2, sense 0
    c = TileCircuit(r_row_segment_ohm=r)
    # node a (cell 1) is held at v by the ideal driver; node b: (v - vb) / r = vb * g2
    vb = v / (1 + r * g2)
    i2 = vb * g2
    i1 = v * g1
    np.testing.assert_allclose(tile_currents_reference(np.array([[g1, g2]]), np.array([v]), c), [i1, i2], rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(tiles(), circuits())
def test_kirchhoff_current_law_holds_at_every_node(tile, c):
    g, v = tile
    volts, edges, fixed = _solve(g, v, c)
    net = np.zeros(volts.size)
    scale = np.zeros(volts.size)
    for a, b, cond in edges:
        if math.isinf(cond):
            assert volts[a] == volts[b]
            continue
        i = cond * (volts[a] - volts[b])
        net[a] -= i
        net[b] += i
        scale[a] += abs(i)
        scale[b] += abs(i)
    # zero-resistance edges carry unknown currents: test KCL on each joined group
    n, _, _ = tile_network(g, c)
    from cimsim.crossbar.circuit import _Nodes

    uf = _Nodes(n)
    for a, b, cond in edges:
        if math.isinf(cond):
            uf.join(a, b)
    groups: dict[int, list[int]] = {}
    for node in range(n):
        groups.setdefault(uf.find(node), []).append(node)
    for members in groups.values():
        if any(m in fixed for m in members):
            continue
        assert abs(net[members].sum()) <= 1e-9 * max(scale.max(), 1e-30)


@settings(max_examples=60, deadline=None)
@given(tiles(), circuits())
def test_power_delivered_equals_power_dissipated(tile, c):
    g, v = tile
    volts, edges, fixed = _solve(g, v, c)
    dissipated = sum(cond * (volts[a] - volts[b]) ** 2 for a, b, cond in edges if not math.isinf(cond))
    # each source's current: what leaves its (possibly joined) node group through resistive edges
    n, _, ix = tile_network(g, c)
    from cimsim.crossbar.circuit import _Nodes

    uf = _Nodes(n)
    for a, b, cond in edges:
        if math.isinf(cond):
            uf.join(a, b)
    delivered = 0.0
    for i, s in enumerate(ix["src"]):
        grp = uf.find(s)
        out = sum(cond * (volts[a] - volts[b]) for a, b, cond in edges
                  if not math.isinf(cond) and uf.find(a) == grp and uf.find(b) != grp)
        out -= sum(cond * (volts[a] - volts[b]) for a, b, cond in edges
                   if not math.isinf(cond) and uf.find(b) == grp and uf.find(a) != grp)
        delivered += v[i] * out
    # rounding: a node voltage off by ~1e-16 V behind a 0.4 S driver edge moves power by ~1e-18 W
    largest = max((cond for _, _, cond in edges if not math.isinf(cond)), default=0.0)
    assert delivered == pytest.approx(dissipated, rel=1e-9, abs=1e-12 * float(np.max(v)) ** 2 * largest + 1e-30)


@settings(max_examples=40, deadline=None)
@given(tiles(), circuits(), st.integers(0, 2**32 - 1))
def test_the_numbering_of_the_nodes_does_not_change_the_currents(tile, c, seed):
    g, v = tile
    ref = tile_currents_reference(g, v, c)
    if c.is_ideal:
        return
    n, edges, ix = tile_network(g, c)
    _, _, fixed = _solve(g, v, c)
    # the number of free node groups, from one solve
    from cimsim.crossbar.circuit import _Nodes

    uf = _Nodes(n)
    for a, b, cond in edges:
        if math.isinf(cond):
            uf.join(a, b)
    fixed_groups = {uf.find(k) for k in fixed}
    n_free = len({uf.find(k) for k in range(n)} - fixed_groups)
    order = np.random.default_rng(seed).permutation(n_free)
    np.testing.assert_allclose(tile_currents_reference(g, v, c, order=order), ref, rtol=1e-9, atol=1e-18)


@settings(max_examples=60, deadline=None)
@given(tiles(), circuits(zero_ok=False), st.sampled_from(RESISTANCES), st.floats(1.01, 10.0))
def test_more_resistance_never_raises_the_current_of_equal_drives_nor_any_total_above_ideal(tile, c, name, factor):
    """Two bounds that follow from the circuit (docs/design.md, "IR drop"): with every row driven
    at one voltage the tile is a two-terminal network, so by Rayleigh's monotonicity raising any
    resistance never raises its total current; and for any non-negative drives the total current
    never exceeds the IR-free ``sum(G^T v)`` (each source's share leaves its row through its own
    cells, each carrying at most ``G v_i``). A single column may exceed its IR-free current, and
    a total may rise with resistance when the drives differ: neither is asserted."""
    g, v = tile
    worse = c.__class__(**{**c.to_dict(), name: getattr(c, name) * factor})
    equal = np.full_like(v, float(v.max()))
    assert tile_currents_reference(g, equal, worse).sum() <= tile_currents_reference(g, equal, c).sum() * (1 + 1e-12) + 1e-21
    for circuit in (c, worse):
        assert tile_currents_reference(g, v, circuit).sum() <= (g.T @ v).sum() * (1 + 1e-12) + 1e-21


def test_a_column_can_exceed_its_ir_free_current_and_a_total_can_rise():
    """Counterexamples found by search: a weakly driven row's nodes are pulled above its drive
    through the columns, so a column whose cells sit mostly on that row carries more than
    ``G^T v``; and with unequal drives more row-wire resistance can raise the tile's total."""
    g = np.array([[1.25934746e-05, 0.0, 9.97529480e-05, 0.0], [1.26484152e-06, 5.72535917e-05, 2.10341909e-05, 0.0],
                  [5.92777521e-05, 9.34723490e-05, 9.99660389e-05, 1.22530304e-05],
                  [1.84726135e-05, 5.13760127e-05, 8.64888569e-05, 0.0]])
    v = np.array([0.10755519, 0.24264314, 0.00443927, 0.00115511])
    c = TileCircuit(r_row_segment_ohm=1000.0, r_col_segment_ohm=0.5, r_driver_ohm=0.5, r_sense_ohm=1000.0,
                    r_access_ohm=0.5)
    i = tile_currents_reference(g, v, c)
    assert i[3] > (g.T @ v)[3] and i.sum() < (g.T @ v).sum()
    # one column, unequal drives: with more column-wire resistance, less of the strong row's
    # current sinks back into the weak rows' drivers, and more reaches the sense amplifier
    g = np.array([[5.063e-05], [2.328e-05], [3.209e-05], [9.749e-05]])
    v = np.array([4.0074e-02, 3.0e-06, 3.409e-03, 4.36e-04])
    c = TileCircuit(r_row_segment_ohm=26.4, r_col_segment_ohm=56.6, r_driver_ohm=0.46, r_sense_ohm=2784.0,
                    r_access_ohm=278.7, drive_end="last", sense_end="first")
    worse = TileCircuit(**{**c.to_dict(), "r_col_segment_ohm": 56.6 * 5.78})
    assert tile_currents_reference(g, v, worse).sum() > 1.01 * tile_currents_reference(g, v, c).sum()


def test_one_column_can_gain_when_a_wire_gets_worse():
    """Not every column's current falls as a resistance grows (issue #20 asked for that; it is
    false): with more row-wire resistance the far columns draw less, less current crosses the
    driver's resistance, and the column next to the driver sees a higher voltage."""
    g = np.array([[51.2e-6, 95.0e-6, 14.4e-6]])
    v = np.array([0.25])
    c = TileCircuit(r_row_segment_ohm=0.5, r_col_segment_ohm=0.5, r_driver_ohm=0.5, r_sense_ohm=0.5,
                    r_access_ohm=0.5)
    before = tile_currents_reference(g, v, c)
    after = tile_currents_reference(g, v, TileCircuit(**{**c.to_dict(), "r_row_segment_ohm": 1.0}))
    assert after[0] > before[0] and after[1] < before[1] and after.sum() < before.sum()


def test_access_transistor_in_series_and_bad_values_named():
    assert cell_conductance_S(np.array([0.0, 1e-4]), 1e3).tolist() == [0.0, pytest.approx(1 / (1e4 + 1e3))]
    with pytest.raises(CircuitError, match="r_sense_ohm"):
        TileCircuit(r_sense_ohm=-1.0)
    with pytest.raises(CircuitError, match="r_row_segment_ohm"):
        TileCircuit(r_row_segment_ohm=float("nan"))
    with pytest.raises(CircuitError, match="drive_end"):
        TileCircuit(drive_end="middle")
    with pytest.raises(CircuitError, match="unknown"):
        TileCircuit.from_dict({"r_wire": 1.0})
    c = TileCircuit(r_row_segment_ohm=2.5, r_access_ohm=1e3, sense_end="first")
    assert TileCircuit.from_dict(c.to_dict()) == c


@settings(max_examples=80, deadline=None)
@given(tiles(max_side=7), circuits(), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_fast_line_solver_equals_the_specification(tile, c, batch, seed):
    """Conjugate gradients on the cell currents, batched: within 1e-6 of the nodal solve, for every
    mix of zero and non-zero resistances and both ends."""
    from cimsim.crossbar.circuit import tile_currents

    g, _ = tile
    v = np.random.default_rng(seed).uniform(0, 0.3, (batch, g.shape[0]))
    ref = np.array([tile_currents_reference(g, x, c) for x in v])
    np.testing.assert_allclose(tile_currents(g, v, c), ref, rtol=1e-6, atol=1e-6 * max(np.abs(ref).max(), 1e-30))


def test_fast_solver_says_when_it_does_not_converge():
    from cimsim.crossbar.circuit import CircuitNotConverged, tile_currents

    g = np.full((8, 8), 100e-6)
    c = TileCircuit(r_row_segment_ohm=50.0, r_col_segment_ohm=50.0, r_driver_ohm=500.0, r_sense_ohm=500.0)
    with pytest.raises(CircuitNotConverged, match="8x8 tile.*residual.*after 2 iterations"):
        tile_currents(g, np.full((1, 8), 0.2), c, max_iter=2)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 7), st.booleans(), st.integers(0, 2**32 - 1))
def test_ladder_is_the_chain_resistance_matrix(rows, cols, first, seed):
    """The O(n) wire term equals sum_k x_k min(d_j, d_k), d = segments from the line's end."""
    from cimsim.crossbar.circuit import _ladder

    x = np.random.default_rng(seed).normal(size=(2, rows, cols))
    d = np.arange(cols) if first else cols - 1 - np.arange(cols)
    want = np.einsum("bik,jk->bij", x, np.minimum.outer(d, d).astype(float))
    np.testing.assert_allclose(_ladder(x, 2, first), want, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(tiles(), circuits(), st.integers(0, 2**32 - 1))
def test_effective_conductance_matrix_gives_every_read_exactly(tile, c, seed):
    """Linearity: one matrix per tile reproduces the circuit for any drive (multi-bit levels or
    bit-serial bits alike); zero resistance gives the cells' conductances bit for bit."""
    from cimsim.crossbar.circuit import effective_conductance_S

    g, _ = tile
    a = effective_conductance_S(g, c)
    v = np.random.default_rng(seed).uniform(0, 0.3, (3, g.shape[0]))
    v[0] = np.random.default_rng(seed).integers(0, 2, g.shape[0]) * 0.2  # a bit-serial cycle
    ref = np.array([tile_currents_reference(g, x, c) for x in v])
    np.testing.assert_allclose(v @ a, ref, rtol=1e-6, atol=1e-6 * max(np.abs(ref).max(), 1e-30))
    assert np.array_equal(effective_conductance_S(g, TileCircuit()), g)
    twin = effective_conductance_S(g, c, kernel="numpy")  # the numpy twin of the Numba kernel
    np.testing.assert_allclose(a, twin, rtol=1e-9, atol=1e-9 * max(np.abs(twin).max(), 1e-30))


def test_numba_effective_matrix_threads_and_convergence():
    """The Numba kernel gives the same matrix on one thread and on all; a tolerance it cannot
    reach in the allowed iterations is a CircuitNotConverged naming the tile."""
    import numba

    from cimsim.crossbar.circuit import CircuitNotConverged, effective_conductance_S

    g = np.random.default_rng(3).uniform(0, 100e-6, (40, 30))
    c = TileCircuit(r_row_segment_ohm=20.0, r_col_segment_ohm=40.0, r_access_ohm=1500.0, drive_end="last")
    a = effective_conductance_S(g, c)
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert np.array_equal(effective_conductance_S(g, c), a)
    finally:
        numba.set_num_threads(n)
    with pytest.raises(CircuitNotConverged, match="40x30 tile"):
        effective_conductance_S(g, c, max_iter=2)
    with pytest.raises(ValueError, match="kernel"):
        effective_conductance_S(g, c, kernel="cuda")
