"""Variation-aware training for compute-in-memory: NeFT (OVF, IRS) and its baselines.

Modules: :mod:`training.run_config` (RunConfig), :mod:`training.data` (data sets),
:mod:`training.models` (MLP, LeNet-5, VGG-8, ResNet-18 with IRS heads),
:mod:`training.variation` (noise backends: paper, device; crossbar extension point),
:mod:`training.methods` (plain, nit, ovf, irs, correctnet losses), :mod:`training.train`
(``python -m training.train``), :mod:`training.evaluate` (Monte Carlo chips and metrics),
:mod:`training.sweep` (``python -m training.sweep``), :mod:`training.bench_training`
(``python -m training.bench_training``). Importing this package does not import torch.
"""
