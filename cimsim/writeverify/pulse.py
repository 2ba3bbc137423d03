"""The pulse-response model of a cell under write-verify (:class:`PulseModel`), its presets
calibrated to measured pulse counts, and the algorithms (``fppv``, ``ispp``). The model and why it
has this form: ``docs/design.md`` (write-verify)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from cimsim.io import parse_json_object

ALGORITHMS = ("fppv", "ispp")


class WriteVerifyError(ValueError):
    """Bad arguments to a write-verify function."""


def _check_algorithm(algorithm: str) -> str:
    a = str(algorithm).lower()
    if a not in ALGORITHMS:
        raise WriteVerifyError(f"unknown write-verify algorithm {algorithm!r}; choose from {ALGORITHMS}")
    return a


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
        return cls.from_dict(parse_json_object(text, "pulse model", WriteVerifyError))


_RADAR = ("Levy et al., 'RADAR', IEEE TED 2021 (doi:10.1109/TED.2021.3097975); pulse-count statistics in "
          "shared/reference/write_verify_pulse_stats.csv")

# Output of ``python -m cimsim.writeverify.calibration --fit --cells 3000`` (seed 0, 1500 cells per level in
# the fit, multi-start Nelder-Mead on the log errors of p25/median/p75/p90/mean and the SET/RESET means
# of the intermediate levels; RADAR chip range taken as 1..260 uS; "loss" = final objective). The fit
# starts from these values, so re-running reproduces them up to the optimizer's tolerance; the
# side-by-side table is printed by ``python -m cimsim.writeverify.calibration``. The two FPPV presets come
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


