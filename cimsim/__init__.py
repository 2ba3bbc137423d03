"""cimsim: a crossbar compute-in-memory simulator with device models fitted from measured data.

Imports stay light: ``import cimsim`` loads neither torch nor numba; the submodules that need
them import them when used. Data flows one way::

    measured data -> device model -> mapping -> programmed array -> MVM -> autograd -> nn -> training
    cimsim.device       cimsim.crossbar (config, mapping, program, mvm)    cimsim.nn    training

Beside them: ``cimsim.kernels`` (Numba kernels), ``cimsim.writeverify`` and ``cimsim.cost``
(programming a chip and what it costs), ``cimsim.io`` (all-or-nothing writes), the benchmarks and
the quick start (``python -m cimsim``).
"""
__version__ = "0.1.0"
