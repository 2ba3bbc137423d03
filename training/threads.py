"""One thread count for torch and Numba in a process.

torch and Numba share one OpenMP runtime here (see :mod:`cimsim.kernels`); a worker process that
limits torch to ``n`` threads must limit Numba's parallel kernels (the crossbar backend) too, or
the cores get oversubscribed (measured: a crossbar NIT step of LeNet-5 took 108 ms with both at 1
thread, 843 ms with Numba left at its default on a busy 2-core machine).
"""
from __future__ import annotations


def set_threads(n: int) -> None:
    """Use ``n`` (>= 1) threads for torch's intra-op pool and for Numba's parallel kernels."""
    import numba
    import torch

    n = max(1, int(n))
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
