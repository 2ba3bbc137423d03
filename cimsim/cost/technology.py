"""The constants that price a chip's arrays and periphery at one technology node, each with its source.

A :class:`Technology` is frozen and JSON-serialisable; energies in pJ and areas in um^2 as the
sources state them (properties give J and mm^2). Presets (:data:`TECHNOLOGIES`):

``isaac32`` (32 nm): ISAAC, Shafiee et al., ISCA 2016 (doi:10.1109/ISCA.2016.12), Table I, per
    in-situ multiply-accumulate unit (IMA: 8 arrays of 128x128 2-bit cells, 8 ADCs, 1024 DACs,
    100 ns read cycle), divided per event:

    * ADC, 8 bits, 1.2 GS/s: 16 mW / 8 ADCs / 1.2e9 conv/s = 1.67 pJ; 0.0096 mm^2 / 8 = 1200 um^2;
      other resolutions 4-10 bits as CiMLoop scales ISAAC's ADC (Andrulis et al., ISPASS 2024,
      hwcomponents-library ``isaac.py``, after Saberi et al., TCAS-I 2011): 0.79 ... 2.38 pJ,
      361 ... 3002 um^2;
    * 1-bit DAC (row driver): 4 mW / 1024 DACs x 100 ns = 0.391 pJ per pulse; 0.00017 mm^2 / 1024;
    * sample-and-hold: 10 uW / 1024 x 100 ns = 0.98 fJ per sample; 0.00004 mm^2 / 1024;
    * shift-and-add: 0.2 mW / (8 ADCs x 1.2e9 conv/s) = 0.021 pJ per conversion; 4 units
      (0.00024 mm^2) shared by 8 ADCs: 30 um^2 per ADC;
    * buffer: input register 2 KB, 1.24 mW, read 1024 bits (one per row) per 100 ns cycle:
      0.121 pJ/bit; register area 0.0021 mm^2 / 16384 bits = 0.128 um^2/bit;
    * cell: 8 arrays of 128x128 in 0.0002 mm^2 = 1.53e-3 um^2 per cell = 1.49 F^2 at 32 nm (ISAAC's
      own figure; a planar crossbar's floor is 4 F^2 -- use ``cell_area_F2`` to change it).

``survey22`` (22 nm): ADC from the ADC survey model of Andrulis et al. (arXiv:2404.06553; Murmann's
    ADC survey, 100 MS/s, 22 nm): 0.46 ... 1.64 pJ, 1828 ... 2678 um^2 for 4-10 bits; the 1-bit DAC,
    sample-and-hold, shift-and-add and buffer are ISAAC's, scaled 32 -> 22 nm with Stillmaker & Baas
    (Integration 58, 2017; x0.446 energy, x0.547 area at 0.8 V); cell a 1T1R cell of 4 x 12 F^2 =
    48 F^2 (NeuroSim V1.3, ``Param.cpp``).

Multi-bit DACs (both presets): the 8-bit DAC of BRAHMS (Song et al., DAC 2021, after Chen et al.,
VLSI 2018): 0.291 pJ per conversion, 438 um^2 at 40 nm, scaled to the node with Stillmaker & Baas and
by ``2**(bits - 8)`` in bits as CiMLoop does; it prices the converter, not the row line it drives.

Any other technology: a JSON file of the same fields (:meth:`Technology.load`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cimsim.cost.programming import ISAAC_ADC_PJ, CostError

# Stillmaker & Baas 2017 (Integration 58:74-81, doi:10.1016/j.vlsi.2017.02.002), Table of their
# scaling equations: energy per operation at Vdd = 0.8 V is a*Vdd^2 + b*Vdd + c (relative), area
# relative to 45 nm; linear interpolation between listed nodes.
_SB_NODES_NM = (45.0, 32.0, 20.0)
_SB_ENERGY_ABC = ((1.103, -0.362, 0.2767), (0.9559, -0.7823, 0.471), (0.373, -0.1582, 0.04104))
_SB_AREA_REL45 = (1.0, 0.46, 0.21)


def _sb_index(node_nm: float) -> float:
    for i in range(len(_SB_NODES_NM) - 1):
        hi, lo = _SB_NODES_NM[i], _SB_NODES_NM[i + 1]
        if lo <= node_nm <= hi:
            return i + (hi - node_nm) / (hi - lo)
    raise CostError(f"no Stillmaker & Baas scaling for {node_nm:g} nm here: nodes {_SB_NODES_NM[-1]:g}-"
                    f"{_SB_NODES_NM[0]:g} nm")


def _sb_interp(table, node_nm: float) -> float:
    x = _sb_index(node_nm)
    i = min(int(x), len(table) - 2)
    w = x - i
    return (1 - w) * table[i] + w * table[i + 1]


def energy_scale(from_nm: float, to_nm: float, vdd_V: float = 0.8) -> float:
    """Energy per operation at ``to_nm`` over that at ``from_nm`` (Stillmaker & Baas 2017)."""
    e = [a * vdd_V ** 2 + b * vdd_V + c for a, b, c in _SB_ENERGY_ABC]
    return _sb_interp(e, to_nm) / _sb_interp(e, from_nm)


def area_scale(from_nm: float, to_nm: float) -> float:
    """Area at ``to_nm`` over that at ``from_nm`` (Stillmaker & Baas 2017)."""
    return _sb_interp(_SB_AREA_REL45, to_nm) / _sb_interp(_SB_AREA_REL45, from_nm)


@dataclass(frozen=True)
class Technology:
    """Energy (pJ), area (um^2) and speed of the parts of a chip at one node (see the module doc).

    adc_bits / adc_energy_pJ / adc_area_um2: the ADC resolutions priced and, per resolution, the
        energy of one conversion and the area of one ADC; adc_rate_Hz: conversions per second.
    dac1_*: a 1-bit DAC (row driver), per pulse; dac_ref_*: a multi-bit DAC of ``dac_ref_bits``,
        per conversion, scaled by ``2**(bits - dac_ref_bits)``; dac_max_bits: the widest priced.
    sample_hold_*: per sample, per converted column; shift_add_*: per conversion, area per ADC;
    buffer_energy_pJ_per_bit: input/output buffer traffic; register_area_um2_per_bit: registers.
    cell_area_F2: one memory cell in F^2 (F = node_nm).
    """

    name: str
    node_nm: float
    cell_area_F2: float
    adc_bits: tuple[int, ...]
    adc_energy_pJ: tuple[float, ...]
    adc_area_um2: tuple[float, ...]
    adc_rate_Hz: float
    dac1_energy_pJ: float
    dac1_area_um2: float
    dac_ref_bits: int
    dac_ref_energy_pJ: float
    dac_ref_area_um2: float
    dac_max_bits: int
    sample_hold_energy_pJ: float
    sample_hold_area_um2: float
    shift_add_energy_pJ: float
    shift_add_area_um2: float
    buffer_energy_pJ_per_bit: float
    register_area_um2_per_bit: float
    sources: str = ""

    def __post_init__(self) -> None:
        def bad(k, why):
            return CostError(f"technology {self.name!r}: {k} {why}")

        if not isinstance(self.name, str) or not self.name:
            raise CostError(f"a technology needs a name, got {self.name!r}")
        for k in ("adc_bits", "adc_energy_pJ", "adc_area_um2"):
            v = getattr(self, k)
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
                raise bad(k, f"must be a list, got {v!r}")
            object.__setattr__(self, k, tuple(v))
        if not (len(self.adc_bits) == len(self.adc_energy_pJ) == len(self.adc_area_um2) >= 1):
            raise bad("adc_bits, adc_energy_pJ, adc_area_um2", "must be lists of one equal length >= 1")
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.adc_bits) \
                or list(self.adc_bits) != sorted(set(self.adc_bits)):
            raise bad("adc_bits", f"must be increasing distinct ints >= 1, got {list(self.adc_bits)}")
        for k in ("dac_ref_bits", "dac_max_bits"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(k, f"must be an int >= 1, got {v!r}")
        floats = [f.name for f in dataclasses.fields(self) if f.type == "float"]
        for k in floats:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(k, f"must be a finite number >= 0, got {v!r}")
        for k in ("adc_energy_pJ", "adc_area_um2"):
            v = getattr(self, k)
            if any(isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e < 0 for e in v):
                raise bad(k, f"must hold finite numbers >= 0, got {list(v)}")
        for k in ("node_nm", "cell_area_F2", "adc_rate_Hz"):
            if not getattr(self, k) > 0:
                raise bad(k, "must be > 0")

    # ----------------------------------------------------------------- prices
    def adc(self, bits: int, where: str = "") -> tuple[float, float, float]:
        """(energy J per conversion, area mm^2 per ADC, conversion time s) of a ``bits``-bit ADC."""
        if bits not in self.adc_bits:
            lo, hi = self.adc_bits[0], self.adc_bits[-1]
            raise CostError(f"{where + ': ' if where else ''}technology {self.name!r} prices ADCs of "
                            f"{list(self.adc_bits) if hi - lo + 1 != len(self.adc_bits) else f'{lo}-{hi}'} "
                            f"bits, not {bits}")
        i = self.adc_bits.index(bits)
        return self.adc_energy_pJ[i] * 1e-12, self.adc_area_um2[i] * 1e-6, 1.0 / self.adc_rate_Hz

    def dac(self, bits: int, where: str = "") -> tuple[float, float]:
        """(energy J per drive, area mm^2 per DAC) of a ``bits``-bit DAC (1: a row driver pulse)."""
        if bits == 1:
            return self.dac1_energy_pJ * 1e-12, self.dac1_area_um2 * 1e-6
        if not 1 < bits <= self.dac_max_bits:
            raise CostError(f"{where + ': ' if where else ''}technology {self.name!r} prices DACs of 1-"
                            f"{self.dac_max_bits} bits, not {bits} (use a bit-serial DAC, or a technology "
                            "JSON with dac_max_bits)")
        s = 2.0 ** (bits - self.dac_ref_bits)
        return self.dac_ref_energy_pJ * s * 1e-12, self.dac_ref_area_um2 * s * 1e-6

    @property
    def sample_hold_energy_J(self) -> float:
        return self.sample_hold_energy_pJ * 1e-12

    @property
    def sample_hold_area_mm2(self) -> float:
        return self.sample_hold_area_um2 * 1e-6

    @property
    def shift_add_energy_J(self) -> float:
        return self.shift_add_energy_pJ * 1e-12

    @property
    def shift_add_area_mm2(self) -> float:
        return self.shift_add_area_um2 * 1e-6

    @property
    def buffer_energy_J_per_bit(self) -> float:
        return self.buffer_energy_pJ_per_bit * 1e-12

    @property
    def register_area_mm2_per_bit(self) -> float:
        return self.register_area_um2_per_bit * 1e-6

    # ------------------------------------------------------------------- I/O
    def replace(self, **changes: Any) -> "Technology":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("adc_bits", "adc_energy_pJ", "adc_area_um2"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "Technology":
        if not isinstance(d, Mapping):
            raise CostError(f"{source}: a technology is a JSON object of fields")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in d and f.default is dataclasses.MISSING)
        if unknown or missing:
            raise CostError(f"{source}: " + "; ".join(
                ([f"unknown technology field(s) {unknown}"] if unknown else [])
                + ([f"missing technology field(s) {missing}"] if missing else [])))
        try:
            return cls(**d)
        except CostError as e:
            raise CostError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        from cimsim.io import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Technology":
        from cimsim.io import read_table

        return cls.from_dict(read_table(path, "technology", CostError), str(path))


# BRAHMS 8-bit DAC at 40 nm (see the module docstring)
_DAC8_40NM_PJ, _DAC8_40NM_UM2 = 0.291, 438.0


def _isaac32() -> Technology:
    return Technology(
        name="isaac32", node_nm=32.0,
        cell_area_F2=0.0002 / 8 / (128 * 128) * 1e6 / 0.032 ** 2,
        adc_bits=tuple(b for b, _ in ISAAC_ADC_PJ),  # 8 bits: 16 mW / 8 / 1.2e9 = 1.67 pJ
        adc_energy_pJ=tuple(e for _, e in ISAAC_ADC_PJ),
        adc_area_um2=(361.0, 477.0, 627.0, 845.0, 0.0096 / 8 * 1e6, 1828.0, 3002.0),
        adc_rate_Hz=1.2e9,
        dac1_energy_pJ=4e-3 / 1024 * 100e-9 * 1e12, dac1_area_um2=0.00017 / 1024 * 1e6,
        dac_ref_bits=8, dac_ref_energy_pJ=_DAC8_40NM_PJ * energy_scale(40, 32),
        dac_ref_area_um2=_DAC8_40NM_UM2 * area_scale(40, 32), dac_max_bits=10,
        sample_hold_energy_pJ=10e-6 / 1024 * 100e-9 * 1e12, sample_hold_area_um2=0.00004 / 1024 * 1e6,
        shift_add_energy_pJ=0.2e-3 / (8 * 1.2e9) * 1e12, shift_add_area_um2=0.00024 / 8 * 1e6,
        buffer_energy_pJ_per_bit=1.24e-3 * 100e-9 / 1024 * 1e12, register_area_um2_per_bit=0.0021 / 16384 * 1e6,
        sources="ISAAC (Shafiee et al., ISCA 2016) Table I; ADC 4-10 b: CiMLoop isaac.py; multi-bit DAC: "
                "BRAHMS (Song et al., DAC 2021) scaled by Stillmaker & Baas 2017",
    )


def _survey22() -> Technology:
    i = _isaac32()
    e, a = energy_scale(32, 22), area_scale(32, 22)
    return Technology(
        name="survey22", node_nm=22.0, cell_area_F2=4.0 * 12.0,
        adc_bits=(4, 5, 6, 7, 8, 9, 10),
        adc_energy_pJ=(0.46, 0.46, 0.53, 0.65, 0.85, 1.16, 1.64),
        adc_area_um2=(1828.0, 1835.0, 1907.0, 2030.0, 2199.0, 2414.0, 2678.0),
        adc_rate_Hz=100e6,
        dac1_energy_pJ=i.dac1_energy_pJ * e, dac1_area_um2=i.dac1_area_um2 * a,
        dac_ref_bits=8, dac_ref_energy_pJ=_DAC8_40NM_PJ * energy_scale(40, 22),
        dac_ref_area_um2=_DAC8_40NM_UM2 * area_scale(40, 22), dac_max_bits=10,
        sample_hold_energy_pJ=i.sample_hold_energy_pJ * e, sample_hold_area_um2=i.sample_hold_area_um2 * a,
        shift_add_energy_pJ=i.shift_add_energy_pJ * e, shift_add_area_um2=i.shift_add_area_um2 * a,
        buffer_energy_pJ_per_bit=i.buffer_energy_pJ_per_bit * e,
        register_area_um2_per_bit=i.register_area_um2_per_bit * a,
        sources="ADC: survey model of Andrulis et al. 2024 (Murmann survey), 22 nm, 100 MS/s; DAC, S+H, "
                "S+A, buffer: ISAAC Table I scaled 32->22 nm (Stillmaker & Baas 2017); cell: 1T1R 4x12 F^2 "
                "(NeuroSim V1.3 Param.cpp)",
    )


TECHNOLOGIES: dict[str, Technology] = {t.name: t for t in (_isaac32(), _survey22())}


def technology(name_or_path: str | os.PathLike | Technology) -> Technology:
    """A preset by name (:data:`TECHNOLOGIES`), a :class:`Technology`, or one loaded from a JSON file."""
    if isinstance(name_or_path, Technology):
        return name_or_path
    if str(name_or_path) in TECHNOLOGIES:
        return TECHNOLOGIES[str(name_or_path)]
    p = Path(name_or_path)
    if p.suffix.lower() != ".json":
        raise CostError(f"unknown technology {str(name_or_path)!r}: presets {sorted(TECHNOLOGIES)}, or a .json file")
    if not p.exists():
        raise CostError(f"{p}: no such technology file (presets: {sorted(TECHNOLOGIES)})")
    return Technology.load(p)
