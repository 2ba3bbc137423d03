"""Write-verify (program-and-verify) of a crossbar array, cell by cell.

Each cell is read, then pulsed and read again until the read conductance lies inside its
acceptance window ``[lo_S, hi_S]`` (target +- tolerance, absolute in siemens or relative to
the target) or a pulse limit is hit. Two algorithms:

* ``"fppv"`` fixed-pulse program-verify: every SET pulse has amplitude ``v_set_V``, every
  RESET pulse ``v_reset_V``;
* ``"ispp"`` incremental-step pulse programming (Suh et al., IEEE JSSC 30(11) 1995, for NAND
  flash; for RRAM e.g. Milo et al., IRPS 2021): the amplitude grows by ``ispp_step_V`` with
  each pulse in the same direction (capped at ``ispp_*_max_V``) and starts again from
  ``ispp_*_start_V`` when the direction changes (after an overshoot).

Pulse-response model (:class:`PulseModel`)
-----------------------------------------
With ``x = (G - gmin) / (gmax - gmin)`` the normalized state of a cell, one pulse in
direction ``d`` (+1 SET, -1 RESET) at amplitude ``V`` changes ``x`` by::

    dx = d * alpha_d * A_d(V) * c_cell * exp(sigma_c2c * X) * b_d(x)
    A_d(V) = exp((V - v_d) / v_slope_V)            (v_d = v_set_V or v_reset_V)
    b_set(x) = (1 - x) ** beta,  b_reset(x) = x ** beta      (soft bounds)
    c_cell = exp(sigma_d2d * X_cell)

then ``x`` is clipped to [0, 1]. ``X`` and ``X_cell`` are standard logistic variables scaled
to unit variance (``X = log(u / (1 - u)) * sqrt(3) / pi``), so the step size is
log-logistic: a power-law tail, i.e. occasional very large jumps. Why this form:

* soft bounds -- the step shrinks as the state approaches the bound it is driven to -- is the
  standard phenomenological RRAM update model (Gokmen & Vlasov, Front. Neurosci. 10:333,
  2016; IBM aihwkit ``SoftBoundsDevice``; NeuroSim's nonlinear update, Chen et al., IEEE TCAD
  37(12) 2018), ``beta`` generalizes its linear form;
* switching speed grows exponentially with voltage (ionic hopping kinetics; Ielmini,
  Semicond. Sci. Technol. 31:063002, 2016), hence ``A(V)`` with ``v_slope_V`` volts per
  e-fold of step size -- this is what makes ISPP's growing amplitude matter;
* cycle-to-cycle and device-to-device variation are multiplicative on the step (Gokmen &
  Vlasov 2016 draw both per pulse and per device); we use a log-logistic rather than a
  log-normal factor because measured write-verify pulse counts are heavy-tailed (median <<
  mean, p99 ~ 10x median; ``shared/reference/write_verify_pulse_stats.csv``, RADAR, Levy et
  al., IEEE TED 2021) and filamentary switching is abrupt; a logistic costs one ``log`` per
  draw, which keeps the kernel above 5 M cells/s. ``alpha`` is the *median* step.

The parameters are calibrated against the RADAR pulse-count statistics by
:mod:`cimsim.pulse_calibration` (presets :data:`PULSE_PRESETS`).

Stuck cells (the device's ``stuck_at_gmin`` / ``stuck_at_gmax`` fractions) do not respond to
pulses: they sit at gmin / gmax and fail unless their window holds that value.

Verify reads may be noisy: with a device read-noise model, each verify read is
``G + sigma_read(G) / sqrt(n_read_avg) * N(0, 1)`` (NeuRRAM averages 8 reads per verify).

Counting: one initial read, then a pulse and a verify read per iteration, so
``reads = pulses + 1`` for every cell that is verified.

Relaxation after verify (choice documented here)
-----------------------------------------------
A fitted device model describes the programming error *of write-verified cells* as a
function of the read time: at its earliest time the spread is the verify window itself (tech
B/C data: "at t = 0 the spread is the write-verify window"), later the cells relax. The pulse
simulation already produces the t = 0 state (every cell inside its window), so only the change
from the model's earliest time ``t0 = device.times_s[0]`` to ``t_read_s`` is added::

    G(t_read) = G_verify + [shift(t_read) - shift(t0)] + sqrt(max(s(t_read)^2 - s(t0)^2, 0)) * Z

with ``shift``/``s`` the model's per-target mean shift and spread scale
(:meth:`DeviceModel.programming_params`) and ``Z`` standard normal, or Student-t with the
model's ``df`` at ``t_read`` where the level is heavy-tailed (scales subtract in quadrature:
exact for normals, an approximation for Student-t). A model given at one time only (e.g. the
NeuRRAM preset, fitted at 1 s *after* its own write-verify) adds nothing: its spread is taken
to be what write-verify leaves. Drift (PCM) is applied on top via ``device.apply_drift``.
``relaxation="none"`` skips this step; ``relaxation="full"`` adds the model's full shift and
spread at ``t_read`` (for models fitted on one-shot programming).

Random numbers
--------------
Pulse-level randomness cannot be drawn ahead (the number of pulses is unknown), so each cell
has its own counter-based stream: splitmix64 seeded from ``(seed, cell index)``. Results
therefore depend only on the seed, never on the thread count or chunking, and the plain
Python reference (:func:`write_verify_reference`) reproduces the Numba kernel number for
number. Relaxation and one-shot programming use a numpy ``Generator``.

The write-verify budget of trained models (a command over training run folders) is
``python -m training.writeverify``: the library never imports the ``training`` package.

Numba threading layer: ``omp`` by default (``CIMSIM_NUMBA_THREADING``); measurements in
:func:`_ensure_threading_layer`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from cimsim.device.model import DeviceModel

ALGORITHMS = ("fppv", "ispp")
RELAXATION_MODES = ("increment", "none", "full")
NO_LIMIT_PULSES = 1_000_000  # "no pulse limit": a finite guard so a stuck cell cannot hang the kernel
_LOGISTIC_UNIT = math.sqrt(3.0) / math.pi  # scales a standard logistic to unit variance
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_SEED_SALT = 0xD1B54A32D192ED03


class WriteVerifyError(ValueError):
    """Bad arguments to a write-verify function."""


# ============================================================================ pulse model
@dataclass(frozen=True)
class PulseModel:
    """How one SET/RESET pulse changes a cell's conductance; see the module docstring.

    Steps are fractions of the device range ``gmax - gmin`` so one model applies to devices of
    any range. Voltages (V) set both the step (through ``A(V)``) and the pulse energy
    (``V^2 G t_pulse``, :mod:`cimsim.cost`).
    """

    name: str = "generic"
    alpha_set: float = 0.05  # median SET step at v_set_V, fraction of the range, at x = 0
    alpha_reset: float = 0.05  # median RESET step at v_reset_V, fraction of the range, at x = 1
    beta: float = 1.0  # soft-bound exponent (1: linear soft bounds)
    sigma_c2c: float = 0.5  # std of ln(step) from pulse to pulse (log-logistic)
    sigma_d2d: float = 0.3  # std of ln(step factor) from cell to cell (log-logistic)
    v_set_V: float = 1.0  # FPPV SET amplitude = reference amplitude of alpha_set
    v_reset_V: float = 1.0  # FPPV RESET amplitude = reference amplitude of alpha_reset
    v_slope_V: float = 0.1  # volts per e-fold of step size
    ispp_set_start_V: float = 0.8
    ispp_reset_start_V: float = 0.8
    ispp_step_V: float = 0.05
    ispp_set_max_V: float = 1.5
    ispp_reset_max_V: float = 1.5
    citation: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for k in ("alpha_set", "alpha_reset", "v_slope_V", "beta"):
            if not getattr(self, k) > 0:
                raise WriteVerifyError(f"PulseModel.{k} must be > 0, got {getattr(self, k)}")
        for k in ("sigma_c2c", "sigma_d2d", "ispp_step_V"):
            if not getattr(self, k) >= 0:
                raise WriteVerifyError(f"PulseModel.{k} must be >= 0, got {getattr(self, k)}")
        for k in ("v_set_V", "v_reset_V", "ispp_set_start_V", "ispp_reset_start_V"):
            if not getattr(self, k) > 0:
                raise WriteVerifyError(f"PulseModel.{k} must be > 0 V, got {getattr(self, k)}")
        if self.ispp_set_max_V < self.ispp_set_start_V or self.ispp_reset_max_V < self.ispp_reset_start_V:
            raise WriteVerifyError("PulseModel: ISPP maximum amplitude below its start amplitude")

    def amplitude_tables(self, algorithm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(A_set, V2_set, A_reset, V2_reset)``: step factor and squared amplitude (V^2) of the
        k-th consecutive pulse in one direction (the last entry repeats once capped)."""
        algorithm = _check_algorithm(algorithm)
        if algorithm == "fppv":
            one = np.ones(1)
            return one, np.array([self.v_set_V**2]), one.copy(), np.array([self.v_reset_V**2])
        out = []
        for v0, vmax, vref in ((self.ispp_set_start_V, self.ispp_set_max_V, self.v_set_V),
                               (self.ispp_reset_start_V, self.ispp_reset_max_V, self.v_reset_V)):
            n = 1 if self.ispp_step_V == 0 else int(math.floor((vmax - v0) / self.ispp_step_V + 1e-9)) + 1
            v = np.minimum(v0 + self.ispp_step_V * np.arange(n), vmax)
            out += [np.exp((v - vref) / self.v_slope_V), v * v]
        return out[0], out[1], out[2], out[3]

    def replace(self, **changes: Any) -> "PulseModel":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["provenance"] = dict(self.provenance)
        return {"kind": "cimsim.PulseModel", **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PulseModel":
        if not isinstance(d, Mapping):
            raise WriteVerifyError(f"a pulse model is a JSON object of fields, got {type(d).__name__}")
        kw = {k: v for k, v in d.items() if k != "kind"}
        if d.get("kind", "cimsim.PulseModel") != "cimsim.PulseModel":
            raise WriteVerifyError(f"not a pulse model (kind {d.get('kind')!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise WriteVerifyError(f"pulse model has unknown fields {sorted(unknown)}")
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PulseModel":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise WriteVerifyError(f"cannot parse the pulse model JSON: {e}") from None
        return cls.from_dict(d)


_RADAR = ("Levy et al., 'RADAR', IEEE TED 2021 (doi:10.1109/TED.2021.3097975); pulse-count statistics in "
          "shared/reference/write_verify_pulse_stats.csv")

# Output of ``python -m cimsim.pulse_calibration --fit --cells 3000`` (seed 0, 1500 cells per level in
# the fit, multi-start Nelder-Mead on the log errors of p25/median/p75/p90/mean and the SET/RESET means
# of the intermediate levels; RADAR chip range taken as 1..260 uS; "loss" = final objective). The fit
# starts from these values, so re-running reproduces them up to the optimizer's tolerance; the
# side-by-side table is printed by ``python -m cimsim.pulse_calibration``. The two FPPV presets come
# from one chip (chip1) and land close to each other (median steps 0.39-0.51 of the range).
PULSE_PRESETS: dict[str, dict[str, Any]] = {
    "radar_fppv": dict(
        name="radar_fppv", alpha_set=0.3905, alpha_reset=0.38018, sigma_c2c=0.60847, sigma_d2d=0.59302,
        citation=_RADAR, provenance={"calibrated_on": "fppv_2bpc_chip1 levels 1-2", "loss": 0.4676},
    ),
    "radar_fppv_3bpc": dict(
        name="radar_fppv_3bpc", alpha_set=0.51395, alpha_reset=0.38843, sigma_c2c=0.58211, sigma_d2d=0.58992,
        citation=_RADAR, provenance={"calibrated_on": "fppv_3bpc_chip1 levels 1-6", "loss": 1.3246},
    ),
    "radar_ispp": dict(
        name="radar_ispp", alpha_set=0.00453, alpha_reset=0.40214, sigma_c2c=0.89665, sigma_d2d=1.11351,
        ispp_step_V=0.15526, ispp_set_start_V=0.48277, citation=_RADAR,
        provenance={"calibrated_on": "ispp_2bpc_chip2 levels 1-2", "loss": 0.2073},
    ),
}


def pulse_preset(name: str) -> PulseModel:
    """A calibrated :class:`PulseModel` by name (``"radar_fppv"``, ``"radar_ispp"``)."""
    try:
        return PulseModel(**PULSE_PRESETS[name])
    except KeyError:
        raise WriteVerifyError(f"unknown pulse model {name!r}; presets are {sorted(PULSE_PRESETS)}") from None


def default_pulse_model(algorithm: str) -> PulseModel:
    """The calibrated preset for ``algorithm`` (``radar_fppv`` or ``radar_ispp``)."""
    return pulse_preset(f"radar_{_check_algorithm(algorithm)}")


# ============================================================================ RNG (shared spec)
def _py_mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * _C1) & _M64
    z = ((z ^ (z >> 27)) * _C2) & _M64
    return z ^ (z >> 31)


def _py_cell_state(seed: int, cell: int) -> int:
    """Initial splitmix64 state of cell ``cell`` for run ``seed`` (both < 2^64)."""
    return _py_mix64((seed ^ _py_mix64((cell + _SEED_SALT) & _M64)) & _M64)


class _PyStream:
    """Plain-Python twin of the kernel's per-cell random stream (splitmix64)."""

    def __init__(self, seed: int, cell: int):
        self.s = _py_cell_state(seed, cell)

    def next(self) -> int:
        self.s = (self.s + _GOLDEN) & _M64
        return _py_mix64(self.s)

    def uniform(self) -> float:  # [0, 1)
        return (self.next() >> 11) * 2.0**-53

    def logistic(self) -> float:  # standard logistic (variance pi^2 / 3)
        u = ((self.next() >> 11) + 0.5) * 2.0**-53
        return math.log(u / (1.0 - u))

    def normal(self) -> float:  # Box-Muller, cosine branch
        u1 = ((self.next() >> 11) + 1.0) * 2.0**-53
        u2 = (self.next() >> 11) * 2.0**-53
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _seed_from(rng: np.random.Generator | int | None) -> tuple[int, np.random.Generator]:
    """``(kernel seed, numpy Generator)`` from an int seed or a Generator (one draw from it)."""
    if rng is None:
        raise WriteVerifyError("pass rng: an int seed or a numpy.random.Generator (a chip is a seed)")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:
            raise WriteVerifyError(f"seed must be >= 0, got {rng}")
        gen = np.random.default_rng(int(rng))
    elif isinstance(rng, np.random.Generator):
        gen = rng
    else:
        raise WriteVerifyError(f"rng must be an int seed or numpy.random.Generator, got {type(rng).__name__}")
    return int(gen.integers(0, 2**63 - 1)), gen


# ============================================================================ inputs
@dataclass(frozen=True)
class KernelInputs:
    """Flat float64/int arrays and scalars handed to the kernel and to the reference (one cell each).

    ``lo_S``/``hi_S``/``g0_S``: (n,) window and initial conductance (S); ``stuck``: (n,) int8
    0 free, 1 stuck at gmin, 2 stuck at gmax; ``params``: float64 vector (see
    :func:`_pack_params`); ``read_poly_uS``: read-noise polynomial (empty: noiseless verify).
    """

    lo_S: np.ndarray
    hi_S: np.ndarray
    g0_S: np.ndarray
    stuck: np.ndarray
    params: np.ndarray
    a_set: np.ndarray
    v2_set: np.ndarray
    a_reset: np.ndarray
    v2_reset: np.ndarray
    read_poly_uS: np.ndarray
    seed: int
    max_pulses: int
    cell_offset: int = 0


# params vector layout (indices used by the kernel and the reference)
_P_GMIN, _P_GMAX, _P_ASET, _P_ARESET, _P_BETA, _P_SC2C, _P_SD2D, _P_READDIV = range(8)


def _pack_params(pm: PulseModel, gmin_S: float, gmax_S: float, n_read_avg: int) -> np.ndarray:
    return np.array([
        gmin_S, gmax_S, pm.alpha_set, pm.alpha_reset, pm.beta,
        pm.sigma_c2c * _LOGISTIC_UNIT, pm.sigma_d2d * _LOGISTIC_UNIT, 1.0 / math.sqrt(n_read_avg),
    ], dtype=np.float64)


def _stuck_codes(device: DeviceModel, n: int, gen: np.random.Generator) -> np.ndarray:
    """Per-cell stuck state drawn with the device's fractions (int8: 0 free, 1 gmin, 2 gmax)."""
    st = np.zeros(n, dtype=np.int8)
    if device.stuck_at_gmin or device.stuck_at_gmax:
        u = gen.random(n)
        st[u < device.stuck_at_gmin] = 1
        st[(u >= device.stuck_at_gmin) & (u < device.stuck_at_gmin + device.stuck_at_gmax)] = 2
    return st


# ============================================================================ numba kernel
_KERNEL = None


def _get_kernel():
    """Compile (or load from cache) the Numba kernel on first use."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    from cimsim.kernels import choose_threading_layer

    choose_threading_layer()
    import numba
    from numba import njit, prange

    u64 = numba.uint64
    GOLD, C1, C2, SALT = np.uint64(_GOLDEN), np.uint64(_C1), np.uint64(_C2), np.uint64(_SEED_SALT)
    S30, S27, S31, S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
    INV53 = 2.0**-53
    TWO_PI = 2.0 * math.pi

    @njit(u64(u64), inline="always", cache=True)
    def mix64(z):
        z = (z ^ (z >> S30)) * C1
        z = (z ^ (z >> S27)) * C2
        return z ^ (z >> S31)

    @njit(cache=True, inline="always")
    def logistic(s):
        s = s + GOLD
        u = (float(mix64(s) >> S11) + 0.5) * INV53
        return s, math.log(u / (1.0 - u))

    @njit(cache=True, inline="always")
    def uniform(s):
        s = s + GOLD
        return s, float(mix64(s) >> S11) * INV53

    @njit(cache=True, inline="always")
    def normal(s):
        s = s + GOLD
        u1 = (float(mix64(s) >> S11) + 1.0) * INV53
        s = s + GOLD
        u2 = float(mix64(s) >> S11) * INV53
        return s, math.sqrt(-2.0 * math.log(u1)) * math.cos(TWO_PI * u2)

    @njit(cache=True, inline="always")
    def read(s, g, poly, div):
        if poly.size == 0:
            return s, g
        acc = 0.0
        for c in poly:
            acc = acc * (g * 1e6) + c
        sig = max(acc, 0.0) * 1e-6 * div
        s, z = normal(s)
        return s, g + sig * z

    @njit(cache=True)
    def one_cell(cell, lo, hi, g0, stuck, p, a_set, v2_set, a_reset, v2_reset, poly, seed, max_pulses, out_f, out_i, i):
        gmin, gmax = p[0], p[1]
        rng_ = gmax - gmin
        s = mix64(np.uint64(seed) ^ mix64(np.uint64(cell) + SALT))
        s, xc = logistic(s)
        c_cell = math.exp(p[6] * xc)
        g = g0
        if stuck == 1:
            g = gmin
        elif stuck == 2:
            g = gmax
        s, r = read(s, g, poly, p[7])
        gsum = g
        nset = 0
        nreset = 0
        e_set = 0.0
        e_reset = 0.0
        last = 0
        k = 0
        ok = lo <= r <= hi
        while (not ok) and nset + nreset < max_pulses:
            d = 1 if r < lo else -1
            if d != last:
                k = 0
                last = d
            s, xp = logistic(s)
            noise = math.exp(p[5] * xp)
            if d == 1:
                j = min(k, a_set.size - 1)
                v2 = v2_set[j]
                x = (gmax - g) / rng_
                b = x if p[4] == 1.0 else x ** p[4]
                step = p[2] * a_set[j] * c_cell * noise * b * rng_
                nset += 1
            else:
                j = min(k, a_reset.size - 1)
                v2 = v2_reset[j]
                x = (g - gmin) / rng_
                b = x if p[4] == 1.0 else x ** p[4]
                step = -(p[3] * a_reset[j] * c_cell * noise * b * rng_)
                nreset += 1
            k += 1
            g_before = g
            if stuck == 0:
                g = min(max(g + step, gmin), gmax)
            if d == 1:  # energy of the pulse: V^2 x the mean of G before and after it, x t (in cost.py)
                e_set += v2 * 0.5 * (g_before + g)
            else:
                e_reset += v2 * 0.5 * (g_before + g)
            s, r = read(s, g, poly, p[7])
            gsum += g
            ok = lo <= r <= hi
        out_f[i, 0] = g
        out_f[i, 1] = e_set
        out_f[i, 2] = e_reset
        out_f[i, 3] = gsum
        out_i[i, 0] = nset
        out_i[i, 1] = nreset
        out_i[i, 2] = nset + nreset + 1
        out_i[i, 3] = 1 if ok else 0

    @njit(parallel=True, cache=True)
    def kernel(lo, hi, g0, stuck, p, a_set, v2_set, a_reset, v2_reset, poly, seed, max_pulses, offset, out_f, out_i):
        for i in prange(lo.size):
            one_cell(offset + i, lo[i], hi[i], g0[i], stuck[i], p, a_set, v2_set, a_reset, v2_reset, poly,
                     seed, max_pulses, out_f, out_i, i)

    _KERNEL = kernel
    return kernel


def run_kernel(inp: KernelInputs, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the Numba kernel: returns ``out_f`` (n, 4) = [G_final_S, sum V^2 G over SET pulses (V^2 S),
    same for RESET, sum of G over all reads (S)] and ``out_i`` (n, 4) int64 = [SET pulses,
    RESET pulses, reads, success]."""
    kernel = _get_kernel()
    n = inp.lo_S.size
    out_f = np.empty((n, 4), dtype=np.float64)
    out_i = np.empty((n, 4), dtype=np.int64)
    import numba

    prev = numba.get_num_threads()
    if n_threads is not None:
        numba.set_num_threads(int(n_threads))
    try:
        kernel(inp.lo_S, inp.hi_S, inp.g0_S, inp.stuck, inp.params, inp.a_set, inp.v2_set, inp.a_reset,
               inp.v2_reset, inp.read_poly_uS, np.uint64(inp.seed), np.int64(inp.max_pulses),
               np.int64(inp.cell_offset), out_f, out_i)
    finally:
        if n_threads is not None:
            numba.set_num_threads(prev)
    return out_f, out_i


def run_reference(inp: KernelInputs) -> tuple[np.ndarray, np.ndarray]:
    """The same algorithm in plain Python, one cell at a time (the spec; slow). Same outputs as
    :func:`run_kernel`, equal number for number for the same inputs."""
    n = inp.lo_S.size
    out_f = np.empty((n, 4), dtype=np.float64)
    out_i = np.empty((n, 4), dtype=np.int64)
    p = [float(v) for v in inp.params]
    gmin, gmax = p[_P_GMIN], p[_P_GMAX]
    span = gmax - gmin
    poly = [float(c) for c in inp.read_poly_uS]

    def verify_read(st: _PyStream, g: float) -> float:
        if not poly:
            return g
        acc = 0.0
        for c in poly:
            acc = acc * (g * 1e6) + c
        return g + max(acc, 0.0) * 1e-6 * p[_P_READDIV] * st.normal()

    tables = {1: (inp.a_set, inp.v2_set, p[_P_ASET]), -1: (inp.a_reset, inp.v2_reset, p[_P_ARESET])}
    for i in range(n):
        st = _PyStream(inp.seed, inp.cell_offset + i)
        c_cell = math.exp(p[_P_SD2D] * st.logistic())
        lo, hi, stuck = float(inp.lo_S[i]), float(inp.hi_S[i]), int(inp.stuck[i])
        g = {0: float(inp.g0_S[i]), 1: gmin, 2: gmax}[stuck]
        r = verify_read(st, g)
        gsum, counts, energy = g, {1: 0, -1: 0}, {1: 0.0, -1: 0.0}
        last, k = 0, 0
        ok = lo <= r <= hi
        while not ok and counts[1] + counts[-1] < inp.max_pulses:
            d = 1 if r < lo else -1
            if d != last:
                k, last = 0, d
            noise = math.exp(p[_P_SC2C] * st.logistic())
            amp, v2, alpha = tables[d]
            j = min(k, amp.size - 1)
            x = (gmax - g) / span if d == 1 else (g - gmin) / span
            b = x if p[_P_BETA] == 1.0 else x ** p[_P_BETA]
            mag = alpha * float(amp[j]) * c_cell * noise * b * span
            counts[d] += 1
            k += 1
            g_before = g
            if stuck == 0:
                g = min(max(g + (mag if d == 1 else -mag), gmin), gmax)
            energy[d] += float(v2[j]) * 0.5 * (g_before + g)
            r = verify_read(st, g)
            gsum += g
            ok = lo <= r <= hi
        out_f[i] = (g, energy[1], energy[-1], gsum)
        out_i[i] = (counts[1], counts[-1], counts[1] + counts[-1] + 1, int(ok))
    return out_f, out_i


# ============================================================================ array level
@dataclass(frozen=True)
class WriteVerifyResult:
    """Programmed conductances and per-cell statistics; every array has the targets' shape.

    ``g_S``: conductance at ``t_read_s`` (after relaxation/drift), S; ``g_programmed_S``: right
    after programming (t = 0), S; ``pulses_set``/``pulses_reset``/``reads``: counts per cell
    (one-shot cells: 1 SET pulse, 0 reads); ``success``: verified cells whose last read was
    inside the window (one-shot cells: False); ``verified``: the mask; ``v2g_set_V2S`` /
    ``v2g_reset_V2S``: sum over the cell's pulses of V^2 * (G_before + G_after) / 2 (V^2 S; times the pulse
    width gives joules); ``g_read_sum_S``: sum of G over the cell's verify reads (S).
    """

    g_S: np.ndarray
    g_programmed_S: np.ndarray
    targets_S: np.ndarray
    lo_S: np.ndarray
    hi_S: np.ndarray
    pulses_set: np.ndarray
    pulses_reset: np.ndarray
    reads: np.ndarray
    success: np.ndarray
    verified: np.ndarray
    v2g_set_V2S: np.ndarray
    v2g_reset_V2S: np.ndarray
    g_read_sum_S: np.ndarray
    algorithm: str
    t_read_s: float
    seed: int

    @property
    def pulses(self) -> np.ndarray:
        return self.pulses_set + self.pulses_reset

    @property
    def failed(self) -> np.ndarray:
        """Verified cells that hit the pulse limit (or ended outside the window)."""
        return self.verified & ~self.success

    def summary(self) -> dict[str, float]:
        """Statistics over the verified cells: success rate, pulse mean/quantiles, SET/RESET
        means, reads mean, and the fraction of cells verified."""
        v = self.verified
        n = int(v.sum())
        out = {"cells": float(v.size), "verified_fraction": n / max(v.size, 1)}
        if n:
            pulses = self.pulses[v]
            out.update(pulse_summary(pulses))
            out.update({
                "success_rate": float(self.success[v].mean()),
                "set_mean": float(self.pulses_set[v].mean()),
                "reset_mean": float(self.pulses_reset[v].mean()),
                "reads_mean": float(self.reads[v].mean()),
            })
        return out


def pulse_summary(pulses: np.ndarray) -> dict[str, float]:
    """Mean and the quantiles p10, p25, median, p75, p90, p99 of a pulse-count array."""
    p = np.asarray(pulses, dtype=np.float64).ravel()
    q = np.quantile(p, [0.10, 0.25, 0.5, 0.75, 0.90, 0.99])
    q = [float(v) for v in q]
    return {"pulses_mean": float(p.mean()), "pulses_p10": q[0], "pulses_p25": q[1], "pulses_median": q[2],
            "pulses_p75": q[3], "pulses_p90": q[4], "pulses_p99": q[5]}


def acceptance_window(targets_S: np.ndarray, tolerance: float, relative: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(lo_S, hi_S)`` = target -+ tolerance (siemens), or target * (1 -+ tolerance) if ``relative``."""
    if not (isinstance(tolerance, (int, float, np.floating)) and math.isfinite(tolerance) and tolerance > 0):
        raise WriteVerifyError(f"tolerance must be a finite number > 0, got {tolerance!r}")
    if relative and tolerance >= 1:
        raise WriteVerifyError(f"a relative tolerance must be < 1, got {tolerance}")
    t = np.asarray(targets_S, dtype=np.float64)
    half = np.abs(t) * tolerance if relative else np.full(t.shape, float(tolerance))
    return t - half, t + half


def _check_algorithm(algorithm: str) -> str:
    a = str(algorithm).lower()
    if a not in ALGORITHMS:
        raise WriteVerifyError(f"unknown write-verify algorithm {algorithm!r}; choose from {ALGORITHMS}")
    return a


def _initial_state(init: str | np.ndarray, shape: tuple[int, ...], device: DeviceModel,
                   gen: np.random.Generator) -> np.ndarray:
    """Conductance before programming (S): ``"erased"`` = gmin (all cells reset, HRS),
    ``"random"`` = uniform over the range (an unknown previous state), or an array."""
    if isinstance(init, str):
        if init == "erased":
            return np.full(shape, device.gmin_S)
        if init == "random":
            return gen.uniform(device.gmin_S, device.gmax_S, shape)
        raise WriteVerifyError(f"init must be 'erased', 'random' or an array of conductances, got {init!r}")
    g0 = np.asarray(init, dtype=np.float64)
    if g0.shape != shape:
        raise WriteVerifyError(f"init array has shape {g0.shape}, targets have {shape}")
    return np.clip(g0, device.gmin_S, device.gmax_S)


def build_inputs(lo_S: np.ndarray, hi_S: np.ndarray, g0_S: np.ndarray, stuck: np.ndarray, device: DeviceModel,
                 pulse_model: PulseModel, algorithm: str, seed: int, max_pulses: int | None,
                 n_read_avg: int = 1, verify_read_noise: bool = True, cell_offset: int = 0) -> KernelInputs:
    """Flatten and type-check the kernel inputs (all conductances in S, arrays of one size)."""
    a_set, v2_set, a_reset, v2_reset = pulse_model.amplitude_tables(algorithm)
    if max_pulses is None:
        max_pulses = NO_LIMIT_PULSES
    if not (isinstance(max_pulses, (int, np.integer)) and max_pulses >= 0):
        raise WriteVerifyError(f"max_pulses must be an int >= 0 or None (no limit), got {max_pulses!r}")
    if not (isinstance(n_read_avg, (int, np.integer)) and n_read_avg >= 1):
        raise WriteVerifyError(f"n_read_avg must be an int >= 1, got {n_read_avg!r}")
    poly = device.read_noise_poly_uS if (verify_read_noise and device.read_noise_poly_uS) else ()
    f = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float64).ravel())  # noqa: E731
    return KernelInputs(
        lo_S=f(lo_S), hi_S=f(hi_S), g0_S=f(g0_S), stuck=np.ascontiguousarray(np.asarray(stuck, np.int8).ravel()),
        params=_pack_params(pulse_model, device.gmin_S, device.gmax_S, int(n_read_avg)),
        a_set=a_set, v2_set=v2_set, a_reset=a_reset, v2_reset=v2_reset,
        read_poly_uS=np.asarray(poly, dtype=np.float64), seed=int(seed) & _M64, max_pulses=int(max_pulses),
        cell_offset=int(cell_offset),
    )


def relax(g_verify_S: np.ndarray, targets_S: np.ndarray, device: DeviceModel, t_read_s: float,
          gen: np.random.Generator, mode: str = "increment") -> np.ndarray:
    """Conductance at ``t_read_s`` of cells left at ``g_verify_S`` by write-verify (S, same shape).

    ``mode="increment"``: add the model's shift and quadrature spread increment from its earliest
    time to ``t_read_s`` (module docstring); ``"full"``: add the model's full shift/spread at
    ``t_read_s``; ``"none"``: no relaxation. Drift (if the model has it) and the conductance floor
    are applied in every mode but ``"none"``.
    """
    if mode not in RELAXATION_MODES:
        raise WriteVerifyError(f"relaxation must be one of {RELAXATION_MODES}, got {mode!r}")
    if not (isinstance(t_read_s, (int, float, np.floating)) and t_read_s >= 0):
        raise WriteVerifyError(f"t_read_s must be a number >= 0 s, got {t_read_s!r}")
    g = np.asarray(g_verify_S, dtype=np.float64)
    if mode == "none" or g.size == 0:
        return g.copy()
    tg = np.asarray(targets_S, dtype=np.float64)
    shift_t, scale_t, df = device.programming_params(tg, float(t_read_s))
    if mode == "increment":
        shift_0, scale_0, _ = device.programming_params(tg, device.times_s[0])
        dshift = shift_t - shift_0
        dscale = np.sqrt(np.maximum(scale_t**2 - scale_0**2, 0.0))
    else:
        dshift, dscale = shift_t, scale_t
    z = gen.standard_normal(g.shape)
    heavy = np.isfinite(df)
    if heavy.any():
        z[heavy] = gen.standard_t(df[heavy])
    out = g + dshift + dscale * z
    if device.drift is not None:
        out = device.apply_drift(out, float(t_read_s), gen)
    if device.g_floor_S is not None:
        out = np.maximum(out, device.g_floor_S)
    return out


def write_verify(
    targets_S: np.ndarray,
    device: DeviceModel,
    algorithm: str = "ispp",
    tolerance: float = 1e-6,
    max_pulses: int | None = 100,
    rng: np.random.Generator | int | None = None,
    mask: np.ndarray | None = None,
    t_read_s: float = 0.0,
    *,
    relative: bool = False,
    pulse_model: PulseModel | None = None,
    init: str | np.ndarray = "erased",
    n_read_avg: int = 1,
    relaxation: str = "increment",
    backend: str = "numba",
) -> WriteVerifyResult:
    """Program ``targets_S`` (S, any shape) by write-verify and read the array at ``t_read_s``.

    ``tolerance``: half-width of the acceptance window, siemens (or a fraction of the target if
    ``relative``; a target of 0 S then has an empty window and can only fail); ``max_pulses``: pulse limit per cell (None: no limit, i.e.
    ``NO_LIMIT_PULSES``); ``rng``: int seed or numpy Generator; ``mask`` (bool, broadcastable to
    the targets): cells to verify -- the others are programmed one-shot by ``device.sample`` at
    ``t_read_s`` (``None``: verify every cell; an all-False mask is plain one-shot);
    ``pulse_model``: default the calibrated preset of the algorithm; ``init``: state before
    programming (``"erased"``, ``"random"`` or an array, S); ``n_read_avg``: reads averaged per
    verify (lowers read noise by sqrt(n)); ``relaxation``: see :func:`relax`; ``backend``:
    ``"numba"`` or ``"reference"`` (plain Python, slow).

    Returns a :class:`WriteVerifyResult` of the targets' shape.
    """
    algorithm = _check_algorithm(algorithm)
    if not isinstance(device, DeviceModel):
        raise WriteVerifyError(f"device must be a cimsim DeviceModel, got {type(device).__name__}")
    if backend not in ("numba", "reference"):
        raise WriteVerifyError(f"backend must be 'numba' or 'reference', got {backend!r}")
    tg = np.asarray(targets_S, dtype=np.float64)
    if not np.all(np.isfinite(tg)):
        raise WriteVerifyError("targets_S contains NaN or inf")
    if tg.size and (tg.min() < device.gmin_S - 1e-15 or tg.max() > device.gmax_S + 1e-15):
        raise WriteVerifyError(
            f"targets_S must lie in the device range [{device.gmin_S}, {device.gmax_S}] S, "
            f"got [{tg.min()}, {tg.max()}] (targets are conductances in siemens)")
    lo, hi = acceptance_window(tg, tolerance, relative)
    if mask is None:
        m = np.ones(tg.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.dtype != bool:
            raise WriteVerifyError(f"mask must be boolean, got dtype {mask.dtype}")
        try:
            m = np.broadcast_to(mask, tg.shape)
        except ValueError:
            raise WriteVerifyError(f"mask of shape {mask.shape} does not broadcast to targets {tg.shape}") from None
    seed, gen = _seed_from(rng)
    pm = default_pulse_model(algorithm) if pulse_model is None else pulse_model
    g0 = _initial_state(init, tg.shape, device, gen)
    stuck = _stuck_codes(device, tg.size, gen).reshape(tg.shape)

    idx = np.flatnonzero(m)
    inp = build_inputs(lo.ravel()[idx], hi.ravel()[idx], g0.ravel()[idx], stuck.ravel()[idx], device, pm,
                       algorithm, seed, max_pulses, n_read_avg)
    if backend == "numba":
        out_f, out_i = run_kernel(inp)
    else:
        out_f, out_i = run_reference(inp)

    n = tg.size
    g_prog = np.empty(n)
    stats_i = np.zeros((n, 4), dtype=np.int64)
    stats_f = np.zeros((n, 4))
    g_prog[idx] = out_f[:, 0]
    stats_i[idx] = out_i
    stats_f[idx] = out_f
    g_relaxed = np.empty(n)
    g_relaxed[idx] = relax(out_f[:, 0], tg.ravel()[idx], device, t_read_s, gen, relaxation)
    rest = np.flatnonzero(~m.ravel())
    if rest.size:  # one-shot: the device model's own programming, one SET pulse, no verify read
        g_os = device.sample(tg.ravel()[rest], float(t_read_s), gen)
        g_relaxed[rest] = g_os
        g_prog[rest] = g_os
        v2 = pm.v_set_V**2
        stats_i[rest, 0] = 1
        stats_f[rest, 1] = v2 * 0.5 * (g0.ravel()[rest] + g_os)  # one pulse from the start to the landing value
    # verified stuck cells stay stuck after relaxation (one-shot cells got their own stuck draw in sample)
    st = np.where(m.ravel(), stuck.ravel(), 0)
    g_relaxed = np.where(st == 1, device.gmin_S, np.where(st == 2, device.gmax_S, g_relaxed))

    shp = tg.shape
    return WriteVerifyResult(
        g_S=g_relaxed.reshape(shp), g_programmed_S=g_prog.reshape(shp), targets_S=tg, lo_S=lo, hi_S=hi,
        pulses_set=stats_i[:, 0].reshape(shp), pulses_reset=stats_i[:, 1].reshape(shp),
        reads=np.where(m.ravel(), stats_i[:, 2], 0).reshape(shp), success=(stats_i[:, 3] == 1).reshape(shp),
        verified=m.copy(), v2g_set_V2S=stats_f[:, 1].reshape(shp), v2g_reset_V2S=stats_f[:, 2].reshape(shp),
        g_read_sum_S=np.where(m.ravel(), stats_f[:, 3], 0.0).reshape(shp), algorithm=algorithm,
        t_read_s=float(t_read_s), seed=seed,
    )


def one_shot(targets_S: np.ndarray, device: DeviceModel, rng: np.random.Generator | int, t_read_s: float = 0.0,
             **kw: Any) -> WriteVerifyResult:
    """Plain one-shot programming (``device.sample``), no verify: ``write_verify`` with an all-False mask."""
    tg = np.asarray(targets_S, dtype=np.float64)
    return write_verify(tg, device, rng=rng, mask=np.zeros(tg.shape, bool), t_read_s=t_read_s, **kw)


def tolerance_sweep(targets_S: np.ndarray, device: DeviceModel, tolerances: Sequence[float], *,
                    rng: int = 0, **kw: Any) -> list[dict[str, float]]:
    """Write-verify the same targets at each tolerance (same seed) and return one summary row per
    tolerance: ``{"tolerance": ..., **WriteVerifyResult.summary(), "rms_error_S": ...}``."""
    if not isinstance(rng, (int, np.integer)):
        raise WriteVerifyError("tolerance_sweep takes an int seed (each tolerance reuses it)")
    rows = []
    for tol in tolerances:
        res = write_verify(targets_S, device, tolerance=tol, rng=int(rng), **kw)
        row = {"tolerance": float(tol), **res.summary()}
        row["rms_error_S"] = float(np.sqrt(np.mean((res.g_S - res.targets_S) ** 2)))
        rows.append(row)
    return rows


# ============================================================================ selective (SWIM)
def _to_numpy(a: Any) -> np.ndarray:
    """numpy view of a numpy array or torch tensor (detached, on CPU) without importing torch."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def sensitivity_first_order(weights: Any, grads: Any) -> np.ndarray:
    """First-order (Taylor) sensitivity ``|w * dL/dw|`` per weight; numpy or torch inputs, same shape."""
    w, g = _to_numpy(weights), _to_numpy(grads)
    if w.shape != g.shape:
        raise WriteVerifyError(f"weights {w.shape} and grads {g.shape} differ in shape")
    return np.abs(w * g)


def fisher_diag(grads: Sequence[Any] | Any) -> np.ndarray:
    """Diagonal Hessian estimate from gradients (empirical Fisher): the mean of squared gradients.

    ``grads``: a sequence of per-batch gradient arrays of one shape, or one array whose first
    axis indexes batches.
    """
    if isinstance(grads, (list, tuple)):
        if not grads:
            raise WriteVerifyError("fisher_diag needs at least one gradient")
        g = np.stack([_to_numpy(x) for x in grads])
    else:
        g = _to_numpy(grads)
        if g.ndim < 1 or g.shape[0] == 0:
            raise WriteVerifyError("fisher_diag needs a batch axis with at least one gradient")
    return np.mean(g * g, axis=0)


def sensitivity_second_order(weights: Any, diag_hessian: Any) -> np.ndarray:
    """Second-order sensitivity ``|w^2 * H_ii| / 2`` per weight (SWIM, Yan et al., arXiv 2202.08395:
    the loss increase of perturbing w by an amount proportional to w), with ``H_ii`` e.g. from
    :func:`fisher_diag`."""
    w, h = _to_numpy(weights), _to_numpy(diag_hessian)
    if w.shape != h.shape:
        raise WriteVerifyError(f"weights {w.shape} and diag_hessian {h.shape} differ in shape")
    return np.abs(w * w * h) / 2.0


def selective_mask(sensitivity: Any, fraction: float) -> np.ndarray:
    """Boolean mask of the top ``fraction`` (0..1) of entries by sensitivity (ties broken by index,
    exactly ``round(fraction * n)`` entries set). ``fraction = 1`` selects all, ``0`` none."""
    s = _to_numpy(sensitivity)
    if not (0.0 <= fraction <= 1.0):
        raise WriteVerifyError(f"fraction must lie in [0, 1], got {fraction}")
    if np.isnan(s).any():
        raise WriteVerifyError("sensitivity contains NaN")
    k = int(round(fraction * s.size))
    mask = np.zeros(s.size, dtype=bool)
    if k:
        order = np.argsort(-s.ravel(), kind="stable")
        mask[order[:k]] = True
    return mask.reshape(s.shape)


# ============================================================================ benchmark
def bench_writeverify(n_cells: int = 2_000_000, repeats: int = 3, threads: Sequence[int | None] = (None,),
                      target_pulses: float = 10.0, quiet: bool = False) -> dict[str, float]:
    """Kernel throughput in cells/second at about ``target_pulses`` pulses per cell; prints one
    line per thread setting and returns ``{"cells_per_s": best, "pulses_per_cell": ..., ...}``.

    Workload: ISPP on a 1..260 uS range, targets uniform over the middle of the range, window
    +-2 % of the range, cells starting erased; the tolerance is tuned once so the mean pulse count
    is near ``target_pulses``.
    """
    import numba

    dev = DeviceModel(name="bench", gmin_S=1e-6, gmax_S=260e-6, times_s=(0.0,), sigma_poly_uS=((0.0,),))
    pm = default_pulse_model("ispp")
    gen = np.random.default_rng(0)
    tg = gen.uniform(60e-6, 200e-6, n_cells)
    g0 = np.full(n_cells, dev.gmin_S)
    st = np.zeros(n_cells, np.int8)
    kernel_t0 = time.perf_counter()
    tol = 0.02 * (dev.gmax_S - dev.gmin_S)
    for _ in range(6):  # tune the window on a slice so the workload is ~target_pulses per cell
        k = min(n_cells, 50_000)
        inp = build_inputs(tg[:k] - tol, tg[:k] + tol, g0[:k], st[:k], dev, pm, "ispp", 1, 200)
        mean_p = run_kernel(inp)[1][:, :2].sum(1).mean()
        tol *= (mean_p / target_pulses) ** 1.5
    compile_s = time.perf_counter() - kernel_t0
    inp = build_inputs(tg - tol, tg + tol, g0, st, dev, pm, "ispp", 1, 200)
    best: dict[str, float] = {}
    for nt in threads:
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            out_f, out_i = run_kernel(inp, n_threads=nt)
            times.append(time.perf_counter() - t0)
        rate = n_cells / min(times)
        ppc = float(out_i[:, :2].sum(1).mean())
        label = numba.get_num_threads() if nt is None else nt
        if not quiet:
            print(f"writeverify kernel: {rate / 1e6:6.2f} M cells/s  ({ppc:.1f} pulses/cell, {rate * ppc / 1e6:.0f} M pulses/s,"
                  f" threads={label}, layer={numba.threading_layer()}, n={n_cells})")
        if rate > best.get("cells_per_s", 0):
            best = {"cells_per_s": rate, "pulses_per_cell": ppc, "threads": float(label)}
    best["setup_s"] = compile_s
    return best


if __name__ == "__main__":  # the command over trained runs lives in the training package
    import sys

    print("python -m cimsim.writeverify: the write-verify budget of trained runs is "
          "`python -m training.writeverify` (same options)", file=sys.stderr)
    sys.exit(2)
