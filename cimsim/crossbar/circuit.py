"""The circuit of one crossbar tile with interconnect parasitics (IR drop), and its specification.

:class:`TileCircuit` holds the resistances (ohm): a wire segment between adjacent cells of a row
(word line) and of a column (bit line), the driver's output resistance where each row is driven,
the sense (ADC input) resistance where each column is read into a virtual ground, and an access
transistor's on-resistance in series with every cell (1T1R; 0 for a passive cell).

:func:`tile_currents_reference` is the specification: the full nodal system of the tile (a node per
cell on its row wire and on its column wire) built as a sparse matrix and solved directly in
float64, one input vector at a time. A zero resistance joins its two nodes. Shapes: conductances
``g_S`` (rows, cols), drive voltages ``v_V`` (rows,), column currents (cols,) in amperes.
Rationale and sources: docs/design.md, "IR drop".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from numba import njit, prange

if TYPE_CHECKING:  # annotations only; the torch twin imports torch when called
    import torch

DRIVE_ENDS = ("first", "last")


class CircuitError(ValueError):
    """An impossible circuit value; the message names the field."""


@dataclass(frozen=True)
class TileCircuit:
    """Parasitic resistances of a tile (ohm) and where its lines are driven and sensed.

    r_row_segment_ohm: word-line wire between two adjacent cells of a row.
    r_col_segment_ohm: bit-line wire between two adjacent cells of a column.
    r_driver_ohm: output resistance of each row's driver (DAC), at the row's driven end.
    r_sense_ohm: input resistance of each column's sense amplifier / ADC (a virtual ground behind it).
    r_access_ohm: on-resistance of the access transistor in series with every cell (0: no transistor).
    drive_end: rows driven at column ``first`` (index 0) or ``last``.
    sense_end: columns sensed at row ``first`` (index 0) or ``last``.
    """

    r_row_segment_ohm: float = 0.0
    r_col_segment_ohm: float = 0.0
    r_driver_ohm: float = 0.0
    r_sense_ohm: float = 0.0
    r_access_ohm: float = 0.0
    drive_end: str = "first"
    sense_end: str = "last"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_ohm"):
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                    raise CircuitError(f"TileCircuit.{f.name} = {v!r}: must be a finite number >= 0 (ohm)")
            elif v not in DRIVE_ENDS:
                raise CircuitError(f"TileCircuit.{f.name} = {v!r}: must be one of {', '.join(DRIVE_ENDS)}")

    @property
    def is_ideal(self) -> bool:
        """True when every resistance is zero: the currents are exactly ``G^T v``."""
        return all(getattr(self, f.name) == 0 for f in dataclasses.fields(self) if f.name.endswith("_ohm"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TileCircuit":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CircuitError(f"TileCircuit: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        return cls(**dict(d))


def cell_conductance_S(g_S: np.ndarray, r_access_ohm: float) -> np.ndarray:
    """Conductance (S) of a cell in series with its access transistor: ``1 / (1/G + R_access)``
    (a cell at 0 S stays open)."""
    g = np.asarray(g_S, dtype=np.float64)
    if r_access_ohm == 0:
        return g.copy()
    return g / (1.0 + g * r_access_ohm)


class _Nodes:
    """Union-find over node numbers: zero resistances join nodes."""

    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return int(a)

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def tile_network(g_S: np.ndarray, circuit: TileCircuit) -> tuple[int, list[tuple[int, int, float]], dict[str, Any]]:
    """The tile as a resistor network: ``(n_nodes, edges, index)``.

    Nodes: ``row(i, j) = i * cols + j`` on the row wires, ``col(i, j) = rows * cols + i * cols + j``
    on the column wires, then one source node per row (``src(i)``) and the ground. Edges
    ``(a, b, conductance_S)`` with ``inf`` for a zero resistance; a cell at 0 S has no edge.
    ``index`` holds the numbering functions and the source and ground nodes.
    """
    g = cell_conductance_S(g_S, circuit.r_access_ohm)
    rows, cols = g.shape
    row = lambda i, j: i * cols + j  # noqa: E731
    col = lambda i, j: rows * cols + i * cols + j  # noqa: E731
    src = [2 * rows * cols + i for i in range(rows)]
    ground = 2 * rows * cols + rows

    def cond(r: float) -> float:
        return math.inf if r == 0 else 1.0 / r

    edges = []
    jd = 0 if circuit.drive_end == "first" else cols - 1
    isn = 0 if circuit.sense_end == "first" else rows - 1
    for i in range(rows):
        edges.append((src[i], row(i, jd), cond(circuit.r_driver_ohm)))
        for j in range(cols - 1):
            edges.append((row(i, j), row(i, j + 1), cond(circuit.r_row_segment_ohm)))
    for j in range(cols):
        for i in range(rows - 1):
            edges.append((col(i, j), col(i + 1, j), cond(circuit.r_col_segment_ohm)))
        edges.append((col(isn, j), ground, cond(circuit.r_sense_ohm)))
    for i in range(rows):
        for j in range(cols):
            if g[i, j] > 0:
                edges.append((row(i, j), col(i, j), float(g[i, j])))
    return ground + 1, edges, {"row": row, "col": col, "src": src, "ground": ground, "g_cell_S": g}


def solve_nodes(n_nodes: int, edges: list[tuple[int, int, float]], fixed: Mapping[int, float],
                order: np.ndarray | None = None) -> np.ndarray:
    """Node voltages (V) of a resistor network with the nodes in ``fixed`` held at their voltages.

    Zero resistances (``inf`` conductance) join their nodes; every other node obeys Kirchhoff's
    current law, solved as one sparse linear system (``scipy.sparse.linalg.spsolve``). ``order``:
    the numbering of the unknowns (a permutation of the free node groups; tests check the answer
    does not depend on it). Every node must have a path to a fixed node (in a tile: through its
    row's driver or its column's sense end).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    uf = _Nodes(n_nodes)
    for a, b, c in edges:
        if math.isinf(c):
            uf.join(a, b)
    rep = np.array([uf.find(a) for a in range(n_nodes)])
    volt_of_group: dict[int, float] = {}
    for node, v in fixed.items():
        r = int(rep[node])
        if r in volt_of_group and volt_of_group[r] != v:
            raise ValueError(f"nodes held at {volt_of_group[r]} V and {v} V are joined by a zero resistance")
        volt_of_group[r] = float(v)
    groups = np.unique(rep)
    free = np.array([r for r in groups if int(r) not in volt_of_group], dtype=np.int64)
    if order is not None:
        free = free[np.asarray(order)]
    slot = {int(r): k for k, r in enumerate(free)}
    n = free.size
    ri, ci, vals = [], [], []
    rhs = np.zeros(n)
    for a, b, c in edges:
        if math.isinf(c):
            continue
        ga, gb = int(rep[a]), int(rep[b])
        if ga == gb:
            continue
        for p, q in ((ga, gb), (gb, ga)):
            if p in slot:
                k = slot[p]
                ri.append(k)
                ci.append(k)
                vals.append(c)
                if q in slot:
                    ri.append(k)
                    ci.append(slot[q])
                    vals.append(-c)
                else:
                    rhs[k] += c * volt_of_group[q]
    volts = dict(volt_of_group)
    if n:
        x = np.atleast_1d(spsolve(sp.csc_matrix((vals, (ri, ci)), shape=(n, n)), rhs))
        for r, k in slot.items():
            volts[r] = float(x[k])
    return np.array([volts[int(rep[a])] for a in range(n_nodes)])


def tile_currents_reference(g_S: np.ndarray, v_V: np.ndarray, circuit: TileCircuit,
                            order: np.ndarray | None = None) -> np.ndarray:
    """Column currents (A, shape (cols,)) of a tile with conductances ``g_S`` (rows, cols) when
    its rows are driven at ``v_V`` (rows,): every node voltage from Kirchhoff's current law, then
    each column's current as the sum of its cells' currents (all of which leave through the
    column's sense end). With every resistance zero it is exactly ``g_S.T @ v_V``."""
    g_S = np.asarray(g_S, dtype=np.float64)
    v_V = np.asarray(v_V, dtype=np.float64)
    if circuit.is_ideal:
        return g_S.T @ v_V
    rows, cols = g_S.shape
    n, edges, ix = tile_network(g_S, circuit)
    fixed = {ix["src"][i]: float(v_V[i]) for i in range(rows)}
    fixed[ix["ground"]] = 0.0
    volts = solve_nodes(n, edges, fixed, order)
    vr = volts[: rows * cols].reshape(rows, cols)
    vc = volts[rows * cols: 2 * rows * cols].reshape(rows, cols)
    return (ix["g_cell_S"] * (vr - vc)).sum(axis=0)


# ------------------------------------------------------------------------------ fast path
class CircuitNotConverged(RuntimeError):
    """The iterative tile solve did not reach its tolerance; the message gives the residual and
    the circuit's resistances (the fields to lower)."""


def _circuit_fields(circuit: TileCircuit) -> str:
    ohms = [f"{f.name} = {getattr(circuit, f.name):g}" for f in dataclasses.fields(circuit)
            if f.name.endswith("_ohm") and getattr(circuit, f.name)]
    return "with " + ", ".join(ohms) + " (lower them, or raise max_iter)"


def _ladder(x: np.ndarray, axis: int, first: bool) -> np.ndarray:
    """``sum_k x_k * min(d_j, d_k)`` along ``axis``, with ``d`` a node's number of wire segments from
    the line's driven (sensed) end: the voltage a chain of unit resistors adds at each node when
    the nodes inject currents ``x``. O(n) by suffix and prefix sums."""
    if not first:
        x = np.flip(x, axis)
    suffix = np.flip(np.cumsum(np.flip(x, axis), axis), axis)  # sum_{k >= m} x_k
    out = np.cumsum(suffix, axis) - suffix.take([0], axis)  # sum_{m = 1..j} suffix_m
    return np.flip(out, axis) if not first else out


def wire_voltages(i_cell: np.ndarray, circuit: TileCircuit) -> tuple[np.ndarray, np.ndarray]:
    """Voltage drops along the row wires and rises along the column wires caused by cell currents
    ``i_cell`` (..., rows, cols) (A): ``(drop_row, rise_col)`` (V), each of that shape. Exact for
    chains driven and sensed at one end each (superposition over the injected currents)."""
    row = circuit.r_row_segment_ohm * _ladder(i_cell, -1, circuit.drive_end == "first") \
        + circuit.r_driver_ohm * i_cell.sum(-1, keepdims=True)
    col = circuit.r_col_segment_ohm * _ladder(i_cell, -2, circuit.sense_end == "first") \
        + circuit.r_sense_ohm * i_cell.sum(-2, keepdims=True)
    return row, col


def _solve_cell_currents(g_S: np.ndarray, v_V: np.ndarray, circuit: TileCircuit, rtol: float,
                         max_iter: int) -> np.ndarray:
    """Cell currents (A) of a stack of tiles of one shape and circuit: ``g_S`` (T, rows, cols),
    drives ``v_V`` (T, B, rows) -> (T, B, rows, cols), by conjugate gradients (see
    :func:`tile_currents`), every (tile, input) pair converging on its own residual."""
    s = np.sqrt(cell_conductance_S(g_S, circuit.r_access_ohm))[:, None]  # (T, 1, R, C)

    def apply(x):
        row, col = wire_voltages(s * x, circuit)
        return x + s * (row + col)

    b = s * v_V[..., None]
    x = b.copy()  # the IR-free cell currents, scaled
    r = b - apply(x)
    p = r.copy()
    rr = (r * r).sum((-2, -1))
    bb = np.maximum((b * b).sum((-2, -1)), 1e-300)
    for _ in range(max_iter):
        if np.all(rr <= rtol * rtol * bb):
            return s * x
        ap = apply(p)
        alpha = rr / np.maximum((p * ap).sum((-2, -1)), 1e-300)
        x += alpha[..., None, None] * p
        r -= alpha[..., None, None] * ap
        rr_new = (r * r).sum((-2, -1))
        p = r + (rr_new / np.maximum(rr, 1e-300))[..., None, None] * p
        rr = rr_new
    rows, cols = g_S.shape[-2:]
    raise CircuitNotConverged(f"IR-drop solve of a {rows}x{cols} tile: relative residual "
                              f"{float(np.sqrt((rr / bb).max())):.2e} after {max_iter} iterations (rtol {rtol:g}) "
                              f"{_circuit_fields(circuit)}")


def tile_currents(g_S: np.ndarray, v_V: np.ndarray, circuit: TileCircuit, rtol: float = 1e-12,
                  max_iter: int = 1000) -> np.ndarray:
    """Column currents (A) of one tile, ``g_S`` (rows, cols), drives ``v_V`` (B, rows) -> (B, cols):
    the fast path of :func:`tile_currents_reference`, solved for the cell currents by conjugate
    gradients: ``I = g (v - drop_row - rise_col)`` with the
    wire terms of :func:`wire_voltages` is ``(1/g + K) I = v``, K symmetric positive semi-definite,
    solved as ``(1 + sqrt(g) K sqrt(g)) x = sqrt(g) v``, ``I = sqrt(g) x`` (cells at 0 S carry none).
    Every iteration is O(B rows cols); it stops when each input's residual is below ``rtol`` of its
    right-hand side, and raises :class:`CircuitNotConverged` after ``max_iter`` iterations."""
    g_S = np.asarray(g_S, dtype=np.float64)
    v = np.atleast_2d(np.asarray(v_V, dtype=np.float64))
    if circuit.is_ideal:
        return v @ g_S
    return _solve_cell_currents(g_S[None], v[None], circuit, rtol, max_iter)[0].sum(1)


def effective_conductance_S(g_S: np.ndarray, circuit: TileCircuit, rtol: float = 1e-12, max_iter: int = 1000,
                            kernel: str = "numba") -> np.ndarray:
    """The tile's effective conductance matrix A (S, shape (rows, cols)): with resistive cells,
    wires and access devices the circuit is linear in the drives, so its column currents are
    exactly ``v @ A`` for every drive vector ``v`` (V), whatever the DAC. Row ``i`` of A: row
    ``i`` alone driven at 1 V. With every resistance zero, A is ``g_S`` itself. A frozen chip pays
    this once per tile; every later read is a plain product. ``kernel``: ``numba``
    (:func:`effective_conductance_numba`, one unit drive per thread) or ``numpy`` (the unit drives
    as one batch of :func:`tile_currents`); the two are tested against each other."""
    g_S = np.asarray(g_S, dtype=np.float64)
    if circuit.is_ideal:
        return g_S.copy()
    if kernel == "numba":
        return effective_conductance_numba(g_S, circuit, rtol, max_iter)
    if kernel != "numpy":
        raise ValueError(f"kernel must be 'numba' or 'numpy', got {kernel!r}")
    return tile_currents(g_S, np.eye(g_S.shape[0]), circuit, rtol, max_iter)


# --------------------------------------------------------------------------- Numba
#: LLVM may reorder sums (so reductions and the fused updates vectorise: about 7x on a 256x256
#: tile) but assumes nothing about NaN or infinity. Results agree with the numpy twin to ~1e-13;
#: the last bits may differ between CPUs of other vector widths, never between thread counts.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, inline="always", fastmath=_FAST)
def _row_pass(p, s, r, beta, update_p, ap, colsum, r_seg, r_end, drive_first):  # pragma: no cover - compiled
    """First half of ``ap = M p`` (one tile, one drive), with CG's direction update fused in: ``p =
    r + beta p`` when ``update_p``; then, with ``q = s p``, ``ap`` = the row-wire term (V) of every
    cell and ``colsum`` (C,) = ``q`` summed over each column. A row's ladder is
    ``r_seg sum_k q_k min(d_j, d_k) + r_end sum_k q_k``, ``d`` the segments from the driven end."""
    R, C = p.shape
    for j in range(C):
        colsum[j] = 0.0
    for i in range(R):
        total = 0.0
        for j in range(C):
            if update_p:
                p[i, j] = r[i, j] + beta * p[i, j]
            qv = s[i, j] * p[i, j]
            ap[i, j] = qv
            total += qv
            colsum[j] += qv
        acc = 0.0
        suffix = total  # sum of q from the node on: each segment carries it
        base = r_end * total
        for m in range(C):
            j = m if drive_first else C - 1 - m
            if m > 0:
                acc += suffix
            qv = ap[i, j]
            ap[i, j] = r_seg * acc + base
            suffix -= qv


@njit(cache=True, inline="always", fastmath=_FAST)
def _col_pass(p, s, ap, colsum, acc, suffix, r_seg, r_end, sense_first):  # pragma: no cover - compiled
    """Second half of ``ap = M p``: ``ap = p + s (row term + column term)``, the column ladders of
    ``q = s p`` run for all columns at once (row by row from the sensed end, so the inner loop is
    contiguous). Returns ``p . ap``."""
    R, C = p.shape
    for j in range(C):
        acc[j] = 0.0
        suffix[j] = colsum[j]
    pap = 0.0
    for m in range(R):
        i = m if sense_first else R - 1 - m
        for j in range(C):
            if m > 0:
                acc[j] += suffix[j]
            v = p[i, j] + s[i, j] * (ap[i, j] + r_seg * acc[j] + r_end * colsum[j])
            ap[i, j] = v
            pap += p[i, j] * v
            suffix[j] -= s[i, j] * p[i, j]
    return pap


@njit(parallel=True, cache=True, nogil=True, fastmath=_FAST)
def _effective_kernel(s, rr_, rc_, rd_, rs_, drive_first, sense_first, rtol, max_iter, a_out,
                      iters):  # pragma: no cover - compiled
    """The effective matrix of one tile by conjugate gradients on ``M = 1 + s K s``, one unit drive
    (row) per parallel task, three fused passes per iteration: ``s`` (R, C) the square roots of the
    cells' conductances (access device included); ``a_out`` (R, C); ``iters`` (R,) the iterations
    each took (-1: not converged)."""
    R, C = s.shape
    for i0 in prange(R):
        x = np.zeros((R, C))
        r = np.zeros((R, C))
        p = np.zeros((R, C))
        ap = np.empty((R, C))
        colsum = np.empty(C)
        acc = np.empty(C)
        suffix = np.empty(C)
        bb = 0.0
        for j in range(C):
            p[i0, j] = s[i0, j]  # b: row i0 at 1 V, scaled; x0 = b, the IR-free currents
            bb += s[i0, j] * s[i0, j]
        _row_pass(p, s, r, 0.0, False, ap, colsum, rr_, rd_, drive_first)
        _col_pass(p, s, ap, colsum, acc, suffix, rc_, rs_, sense_first)
        rr = 0.0
        for i in range(R):
            for j in range(C):
                b = s[i, j] if i == i0 else 0.0
                x[i, j] = b
                r[i, j] = b - ap[i, j]
                p[i, j] = r[i, j]
                rr += r[i, j] * r[i, j]
        done = -1
        beta = 0.0
        for it in range(max_iter + 1):
            if rr <= rtol * rtol * max(bb, 1e-300):
                done = it
                break
            if it == max_iter:
                break
            _row_pass(p, s, r, beta, it > 0, ap, colsum, rr_, rd_, drive_first)
            alpha = rr / max(_col_pass(p, s, ap, colsum, acc, suffix, rc_, rs_, sense_first), 1e-300)
            rr_new = 0.0
            for i in range(R):
                for j in range(C):
                    x[i, j] += alpha * p[i, j]
                    rv = r[i, j] - alpha * ap[i, j]
                    r[i, j] = rv
                    rr_new += rv * rv
            beta = rr_new / max(rr, 1e-300)
            rr = rr_new
        iters[i0] = done
        for j in range(C):
            a_out[i0, j] = 0.0
        for i in range(R):
            for j in range(C):
                a_out[i0, j] += s[i, j] * x[i, j]


def effective_conductance_numba(g_S: np.ndarray, circuit: TileCircuit, rtol: float = 1e-12,
                                max_iter: int = 1000) -> np.ndarray:
    """:func:`effective_conductance_S` by the Numba kernel: the same conjugate gradients, fused, one
    unit drive per thread (reproducible: no reduction crosses threads)."""
    g_S = np.asarray(g_S, dtype=np.float64)
    if circuit.is_ideal:
        return g_S.copy()
    s = np.ascontiguousarray(np.sqrt(cell_conductance_S(g_S, circuit.r_access_ohm)))
    a = np.empty_like(s)
    iters = np.empty(s.shape[0], dtype=np.int64)
    _effective_kernel(s, float(circuit.r_row_segment_ohm), float(circuit.r_col_segment_ohm),
                      float(circuit.r_driver_ohm), float(circuit.r_sense_ohm), circuit.drive_end == "first",
                      circuit.sense_end == "first", float(rtol), int(max_iter), a, iters)
    if (iters < 0).any():
        rows, cols = g_S.shape
        raise CircuitNotConverged(f"IR-drop solve of a {rows}x{cols} tile: {int((iters < 0).sum())} of {rows} "
                                  f"unit drives above rtol {rtol:g} after {max_iter} iterations "
                                  f"{_circuit_fields(circuit)}")
    return a


# --------------------------------------------------------------------------- torch
def _ladder_torch(x: "torch.Tensor", dim: int, first: bool) -> "torch.Tensor":
    """:func:`_ladder` in torch (any device)."""
    import torch

    if not first:
        x = torch.flip(x, (dim,))
    suffix = torch.flip(torch.cumsum(torch.flip(x, (dim,)), dim), (dim,))
    out = torch.cumsum(suffix, dim) - suffix.narrow(dim, 0, 1)
    return torch.flip(out, (dim,)) if not first else out


def effective_conductance_torch(g_S: "torch.Tensor", circuit: TileCircuit, rtol: float = 1e-12,
                                max_iter: int = 1000) -> "torch.Tensor":
    """:func:`effective_conductance_S` in torch on ``g_S``'s device (CUDA for chips drawn there):
    ``g_S`` (..., rows, cols), any leading tile dimensions solved together, float64 throughout;
    the unit drives of every tile are one batch of conjugate gradients, each converging on its own
    residual. Raises :class:`CircuitNotConverged` like the host kernels."""
    import torch

    g = g_S.to(torch.float64)
    if circuit.is_ideal:
        return g.clone()
    R, C = g.shape[-2:]
    ga = g if circuit.r_access_ohm == 0 else torch.where(g > 0, g / (1 + g * circuit.r_access_ohm), g)
    s = ga.sqrt().unsqueeze(-3)  # (..., 1, R, C)

    def apply(x):
        i = s * x
        row = circuit.r_row_segment_ohm * _ladder_torch(i, -1, circuit.drive_end == "first") \
            + circuit.r_driver_ohm * i.sum(-1, keepdim=True)
        col = circuit.r_col_segment_ohm * _ladder_torch(i, -2, circuit.sense_end == "first") \
            + circuit.r_sense_ohm * i.sum(-2, keepdim=True)
        return x + s * (row + col)

    eye = torch.eye(R, dtype=torch.float64, device=g.device)
    b = s * eye[:, :, None]  # (..., R drives, R, C)
    x = b.clone()
    r = b - apply(x)
    p = r.clone()
    rr = (r * r).sum((-2, -1))
    bb = (b * b).sum((-2, -1)).clamp_min(1e-300)
    for _ in range(max_iter):
        if bool((rr <= rtol * rtol * bb).all()):
            return (s * x).sum(-2)
        ap = apply(p)
        alpha = rr / (p * ap).sum((-2, -1)).clamp_min(1e-300)
        x = x + alpha[..., None, None] * p
        r = r - alpha[..., None, None] * ap
        rr_new = (r * r).sum((-2, -1))
        p = r + (rr_new / rr.clamp_min(1e-300))[..., None, None] * p
        rr = rr_new
    raise CircuitNotConverged(f"IR-drop solve of a {R}x{C} tile: relative residual "
                              f"{float((rr / bb).max().sqrt()):.2e} after {max_iter} iterations (rtol {rtol:g}) "
                              f"{_circuit_fields(circuit)}")


# --------------------------------------------------------------------------- reusing a solve
def read_through_solve(g_cells, solved_cells, solved_eff):
    """Effective conductances (S) of cells ``g_cells`` read through another chip's exact solve,
    ``solved_cells`` -> ``solved_eff`` (numpy arrays or torch tensors of one shape): that chip's
    effective matrix (sneak currents included), moved by each cell's change times the derivative a
    cell in series with a fixed resistance has, the square of its attenuation ``a = clip(eff / cells,
    0, 1)``: ``eff + a**2 * (g_cells - cells)``. Exact for the solved chip itself, first order in
    the difference for another (a new draw of the same layer, or its weights some training steps
    later); its error is measured by ``python -m cimsim.bench ir_drop`` (docs/design.md, "IR drop")."""
    if isinstance(g_cells, np.ndarray):
        on = solved_cells > 0
        att = np.clip(np.where(on, solved_eff / np.where(on, solved_cells, 1.0), 1.0), 0.0, 1.0)
    else:
        import torch

        on = solved_cells > 0
        one = torch.ones_like(solved_cells)
        att = torch.where(on, solved_eff / torch.where(on, solved_cells, one), one).clamp(0.0, 1.0)
    return solved_eff + att * att * (g_cells - solved_cells)


# --------------------------------------------------------------------------- a layer's tiles
def layer_columns(n_out: int, n_slices: int) -> np.ndarray:
    """(n_slices, 2, n_out) the physical layer column of slice ``k``, side ``s`` (G+ 0, G- 1) and
    output ``j``: ``(j * n_slices + k) * 2 + s``, a weight's cells side by side; tile ``c //
    tile_cols`` holds layer column ``c`` at its column ``c % tile_cols``."""
    k, s, j = np.meshgrid(np.arange(n_slices), np.arange(2), np.arange(n_out), indexing="ij")
    return (j * n_slices + k) * 2 + s


def partial_tile_circuit(circuit: TileCircuit, rows_used: int, cols_used: int, tile_rows: int,
                         tile_cols: int) -> TileCircuit:
    """The circuit of a tile whose first ``rows_used`` rows and ``cols_used`` columns hold cells:
    the cell-free wire between the used block and a line end at the far side is plain series
    resistance, folded into that end's driver (sense) resistance; exact, and the solve shrinks to
    the used block."""
    extra_row = (tile_cols - cols_used) * circuit.r_row_segment_ohm if circuit.drive_end == "last" else 0.0
    extra_col = (tile_rows - rows_used) * circuit.r_col_segment_ohm if circuit.sense_end == "last" else 0.0
    return dataclasses.replace(circuit, r_driver_ohm=circuit.r_driver_ohm + extra_row,
                               r_sense_ohm=circuit.r_sense_ohm + extra_col)


def layer_tiles(n_in: int, n_out: int, n_slices: int, tile_rows: int, tile_cols: int):
    """The tiles of a layer: ``(rows, cols, circuit_fix)`` per tile, ``rows`` a slice of inputs,
    ``cols`` a slice of layer columns (:func:`layer_columns`), ``(rows_used, cols_used)`` for
    :func:`partial_tile_circuit`."""
    n_cols = 2 * n_slices * n_out
    for r0 in range(0, n_in, tile_rows):
        r1 = min(r0 + tile_rows, n_in)
        for c0 in range(0, n_cols, tile_cols):
            c1 = min(c0 + tile_cols, n_cols)
            yield slice(r0, r1), slice(c0, c1), (r1 - r0, c1 - c0)


def effective_layer_S(g_pos_S: np.ndarray, g_neg_S: np.ndarray, circuit: TileCircuit, tile_rows: int,
                      tile_cols: int, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Effective conductances (S) of a programmed layer's cells, ``g_pos_S``/``g_neg_S`` (S, in, out)
    -> the same shapes: tile by tile (:func:`layer_tiles`) the tile's effective matrix
    (:func:`effective_conductance_S`), so that every read ``v @ A`` of a tile is its column currents
    with the wires. ``progress(done, total)`` is called after each tile when given. (Solving the
    tiles of one shape as one stack was measured slower in numpy: 4.2 s against 1.8 s for 64
    tiles of 32x32.)"""
    S, n_in, n_out = g_pos_S.shape
    cells = np.stack([g_pos_S, g_neg_S], axis=1).transpose(2, 3, 0, 1).reshape(n_in, -1)  # (in, (j, k, s))
    if circuit.is_ideal:
        return np.array(g_pos_S, dtype=np.float64), np.array(g_neg_S, dtype=np.float64)
    out = np.empty_like(cells, dtype=np.float64)
    tiles = list(layer_tiles(n_in, n_out, S, tile_rows, tile_cols))
    for i, (rows, cols, (nr, nc)) in enumerate(tiles):
        out[rows, cols] = effective_conductance_S(cells[rows, cols],
                                                  partial_tile_circuit(circuit, nr, nc, tile_rows, tile_cols))
        if progress is not None:
            progress(i + 1, len(tiles))
    a = out.reshape(n_in, n_out, S, 2).transpose(2, 3, 0, 1)  # (S, 2, in, out)
    return np.ascontiguousarray(a[:, 0]), np.ascontiguousarray(a[:, 1])


def effective_layer_torch(g_pos: "torch.Tensor", g_neg: "torch.Tensor", circuit: TileCircuit, tile_rows: int,
                          tile_cols: int, kernel: str = "auto") -> tuple["torch.Tensor", "torch.Tensor"]:
    """:func:`effective_layer_S` for tensors, on their device (float64): the tiles of one shape are
    solved as one stack by :func:`effective_conductance_torch` (``kernel`` ``torch``, and ``auto``
    off the CPU); ``auto`` on the CPU hands the layer to :func:`effective_layer_S` (the Numba
    kernel: the batched torch solve of a 256x256 tile was measured 80x slower there)."""
    import torch

    S, n_in, n_out = g_pos.shape
    if circuit.is_ideal:
        return g_pos, g_neg
    if kernel not in ("auto", "torch"):
        raise ValueError(f"kernel must be 'auto' or 'torch', got {kernel!r}")
    if kernel == "auto" and g_pos.device.type == "cpu":
        a_pos, a_neg = effective_layer_S(g_pos.detach().to(torch.float64).numpy(),
                                         g_neg.detach().to(torch.float64).numpy(), circuit, tile_rows, tile_cols)
        return torch.from_numpy(a_pos).to(g_pos.dtype), torch.from_numpy(a_neg).to(g_neg.dtype)
    cells = torch.stack([g_pos, g_neg], 1).permute(2, 3, 0, 1).reshape(n_in, -1).to(torch.float64)
    out = torch.empty_like(cells)
    groups: dict[tuple[int, int], list[tuple[slice, slice]]] = {}
    for rows, cols, shape in layer_tiles(n_in, n_out, S, tile_rows, tile_cols):
        groups.setdefault(shape, []).append((rows, cols))
    for (nr, nc), tiles in groups.items():
        a = effective_conductance_torch(torch.stack([cells[r, c] for r, c in tiles]),
                                        partial_tile_circuit(circuit, nr, nc, tile_rows, tile_cols))
        for (r, c), a_tile in zip(tiles, a):
            out[r, c] = a_tile
    a = out.reshape(n_in, n_out, S, 2).permute(2, 3, 0, 1)
    return a[:, 0].contiguous().to(g_pos.dtype), a[:, 1].contiguous().to(g_neg.dtype)

