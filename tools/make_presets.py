"""Regenerate the preset device models in ``device_models/`` from published coefficients.

Run: ``python tools/make_presets.py``. Every number comes from ``../shared/reference/README.md``
section 4 (published programming-noise models) or section 1 (NeFT stylized devices); the
citation is stored in each JSON. The fitted model ``device_models/rram.json`` is not made
here: ``python -m cimsim.fit data/measured/rram.csv`` makes it.
"""
from __future__ import annotations

from cimsim.device.model import PRESET_DIR, ClippedLogLinear, DeviceModel, PowerLawDrift, neft_stylized


def presets() -> dict[str, DeviceModel]:
    out: dict[str, DeviceModel] = {}
    out["neurram"] = DeviceModel(
        name="neurram",
        technology="RRAM (NeuRRAM chip, 130 nm)",
        citation="Wan et al., 'A compute-in-memory chip based on resistive random-access memory', "
        "Nature 608, 504-512 (2022): cubic fit of programming spread at t = 1 s, G <= 39.3 uS; "
        "chip settings gmin 1 uS, gmax 40 uS",
        gmin_S=1e-6,
        gmax_S=40e-6,
        times_s=(1.0,),
        # sigma_uS = 1.536e-4 G^3 - 1.167e-2 G^2 + 0.2374 G + 1.053 (G in uS), clipped at 0
        sigma_poly_uS=((1.536e-4, -1.167e-2, 0.2374, 1.053),),
        provenance={"preset": True, "valid_G_uS": [0, 39.3]},
    )
    gmax_pcm = 25.0  # uS; sigma scales by gmax/25 for another gmax (Nandakumar 2019)
    out["pcm_joshi"] = DeviceModel(
        name="pcm_joshi",
        technology="PCM",
        citation="Nandakumar et al. 2019 / Joshi et al., Nature Communications 11, 2473 (2020), as in "
        "IBM aihwkit PCMLikeNoiseModel: sigma_prog = max(-1.1731 g^2 + 1.9650 g + 0.26348, 0) uS, "
        "g = G/gmax, gmax = 25 uS; drift G(t) = G (t/20 s)^-nu, "
        "nu ~ N(clip(-0.0155 ln g + 0.0244, 0.049, 0.1), clip(-0.0125 ln g - 0.0059, 0.008, 0.045))",
        gmin_S=0.0,
        gmax_S=gmax_pcm * 1e-6,
        times_s=(0.0,),
        sigma_poly_uS=((-1.1731 / gmax_pcm**2, 1.9650 / gmax_pcm, 0.26348),),
        drift=PowerLawDrift(
            t0_s=20.0,
            nu_mean=ClippedLogLinear(a=-0.0155, b=0.0244, lo=0.049, hi=0.1),
            nu_std=ClippedLogLinear(a=-0.0125, b=-0.0059, lo=0.008, hi=0.045),
        ),
        provenance={"preset": True, "note": "programming noise at t0; 1/f read noise of aihwkit not included"},
    )
    for name, s in (("rram1", 1.0), ("fefet2", 2.0), ("rram4", 4.0), ("fefet6", 6.0)):
        out[name] = neft_stylized(name, s)
    return out


if __name__ == "__main__":
    for name, model in presets().items():
        print("wrote", model.save(PRESET_DIR / f"{name}.json"))
