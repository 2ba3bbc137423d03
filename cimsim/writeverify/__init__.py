"""Write-verify (program-and-verify) of crossbar cells: the pulse model (:mod:`.pulse`), the
per-cell loop as a Numba kernel with its Python reference (:mod:`.kernel`), the array-level API
(:mod:`.verify`) and the calibration against measured pulse counts (:mod:`.calibration`,
``python -m cimsim.writeverify.calibration``). numpy only until a kernel runs; never imports
``training`` (the budget of trained runs is ``python -m training.writeverify_budget``)."""
from cimsim.writeverify.kernel import NO_LIMIT_PULSES, KernelInputs, build_inputs, run_kernel, run_reference
from cimsim.writeverify.pulse import (ALGORITHMS, PULSE_PRESETS, PulseModel, WriteVerifyError, default_pulse_model,
                                      pulse_preset)
from cimsim.writeverify.verify import (RELAXATION_MODES, WriteVerifyResult, acceptance_window, one_shot,
                                       pulse_summary, relax, tolerance_sweep, write_verify)

__all__ = ["ALGORITHMS", "NO_LIMIT_PULSES", "PULSE_PRESETS", "RELAXATION_MODES", "KernelInputs", "PulseModel",
           "WriteVerifyError", "WriteVerifyResult", "acceptance_window", "build_inputs", "default_pulse_model",
           "one_shot", "pulse_preset", "pulse_summary", "relax", "run_kernel", "run_reference", "tolerance_sweep",
           "write_verify"]
