"""A sweep over methods and sigmas on Ray: every (method, sigma, seed) cell is a Ray task.

    python examples/sweep_on_ray.py [--out example_out/ray_sweep] [--address ray://HOST:10001]

Without ``--address`` a local Ray is started for the sweep (2 CPUs); with one, the cells go to
that cluster. Same as ``python -m training.sweep --engine ray ...``: the results land in
``results.csv`` (one row per cell, appended as cells finish), with a run folder per cell and the
accuracy and EKL plots; rerunning continues where it stopped.
"""
from __future__ import annotations

import argparse

from training.engines import make_engine
from training.run_config import RunConfig
from training.sweep import sweep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="example_out/ray_sweep")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: start a local one)")
    a = ap.parse_args(argv)
    base = RunConfig(model="mlp", dataset="digits", noise="paper", device_model="rram1", epochs=1, batch_size=64,
                     lr=5e-3, eval_chips=10, val_chips=1)
    engine = make_engine("ray", address=a.address, cpus_per_task=1,
                         ray_init=None if a.address else {"num_cpus": 2, "include_dashboard": False})
    try:
        csv = sweep(base, ["plain", "nit"], [0.1, 0.2], [0], a.out, engine=engine, threads=1)
    finally:
        engine.close()
    print(f"wrote {csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
