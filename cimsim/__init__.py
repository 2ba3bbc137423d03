"""cimsim: a crossbar compute-in-memory simulator with device models fitted from measured data.

Imports stay light: ``import cimsim`` loads neither torch nor numba; the submodules that need
them import them when used. Data flows one way::

    measured data -> device (fit) -> mapping -> program -> mvm -> autograd -> nn -> training
"""
__version__ = "0.1.0"
