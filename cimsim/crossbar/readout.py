"""What every programmed chip offers the fast MVM (:mod:`cimsim.crossbar.mvm`), whatever holds its
conductances: numpy on the host (:class:`cimsim.crossbar.program.ProgrammedArray`) or torch on a device
(:class:`cimsim.crossbar.program_torch.DeviceArray`). numpy only, so that programming does not import torch.
"""
from __future__ import annotations

import numpy as np

from cimsim.seeds import read_seed


class ChipReadout:
    """What every programmed chip offers the fast path, whatever holds its conductances (numpy on
    the host: :class:`cimsim.crossbar.program.ProgrammedArray`; torch on a device: :class:`cimsim.crossbar.program_torch.DeviceArray`).

    Needs ``config``, ``scale`` ((out,) weight step), ``drift_scale``, ``output_gain`` ((out,) or
    None), ``seed`` and ``_cache``.
    """

    @property
    def n_groups(self) -> int:
        """Column groups the ADCs see: one per slice (differential), two per slice (separate)."""
        return self.config.n_slices * (1 if self.config.adc_convert == "differential" else 2)

    def output_scale(self, clip: float) -> np.ndarray:
        """(out,) factor from integer partial-sum units to layer output units:
        weight step x input step (clip / (2^b - 1)) x drift compensation x output gain."""
        s = self.scale * (clip / self.config.x_max_int) * self.drift_scale
        return s if self.output_gain is None else s * self.output_gain

    def next_read_seed(self) -> int:
        """A fresh seed for one read's noise, derived from the chip seed and a read counter."""
        n = self._cache.get("reads", 0)
        self._cache["reads"] = n + 1
        return read_seed(self.seed if self.seed is not None else 0, n)
