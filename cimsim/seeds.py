"""Seeds: one rule from a run's seed to every random draw (a chip is a seed).

::

    run seed s
    |- chip_seed(s, i)                 chip i of the run: Monte Carlo evaluation, write-verify, sweeps
    |  |- chip_generator(chip, device)    torch generator of the weight-noise backends (paper, device)
    |  '- layer_seed(chip, l)             crossbar layer l of that chip (backbone order): its cells
    |     |- read_seed(layer, n)          n-th read of that array (read noise)
    |     |- fresh_seed(layer, n)         n-th fresh draw of a layer in training ("fresh" mode)
    |     '- program_block_seed(layer, b) b-th row block of a layer too large to write-verify at once
    '- run_stream_seed(s, stream)      a training run's own streams (SHUFFLE, TRAIN_NOISE, VALIDATION,
                                       SENSITIVITY)

Every child is ``numpy.random.SeedSequence(entropy=parent, spawn_key=key)``: independent,
stable across numpy versions, and the same on every machine and torch device. Seeds are 63-bit
(they fit int64 and ``torch.Generator.manual_seed``) except :func:`chip_seed` and the
training streams, which keep the widths the shipped runs used (64 and 32/64 bits).
"""
from __future__ import annotations

import numpy as np

#: spawn key that separates an array's read stream from its other children
READ_KEY = 0x5EAD
#: spawn key of the row blocks of a layer write-verified in parts (training.programming)
PROGRAM_BLOCK_KEY = 0xB10C
#: a run's training streams (:func:`run_stream_seed`)
SHUFFLE, TRAIN_NOISE, VALIDATION, SENSITIVITY = 1, 2, 3, 7
_STREAM_BITS = {SHUFFLE: 32, TRAIN_NOISE: 64, VALIDATION: 32, SENSITIVITY: 32}


def derive(seed: int, *key: int) -> int:
    """63-bit child ``key`` of ``seed`` (both non-negative ints)."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in key))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def chip_seed(run_seed: int, chip: int) -> int:
    """64-bit seed of chip ``chip`` of a run with seed ``run_seed``."""
    ss = np.random.SeedSequence(int(run_seed), spawn_key=(int(chip),))
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def chip_seeds(run_seed: int, chips: int) -> list[int]:
    """Seeds of chips ``0 .. chips-1`` of a run."""
    return [chip_seed(run_seed, i) for i in range(chips)]


def layer_seed(chip: int, layer: int) -> int:
    """Seed of crossbar layer ``layer`` (0-based, backbone order) of the chip with seed ``chip``."""
    return derive(chip, layer)


def read_seed(array_seed: int, n: int) -> int:
    """Seed of the ``n``-th read (0-based) of the array programmed from ``array_seed``."""
    return derive(array_seed, READ_KEY, n)


def fresh_seed(layer: int, n: int) -> int:
    """Seed of the ``n``-th fresh array a training layer with seed ``layer`` draws."""
    return derive(layer, n)


def program_block_seed(layer: int, block: int) -> int:
    """Seed of row block ``block`` of a layer (seed ``layer``) write-verified in parts."""
    return derive(layer, PROGRAM_BLOCK_KEY, block)


def chip_generator(chip: int, device="cpu"):
    """A ``torch.Generator`` on ``device`` seeded with the chip's seed (all 64 bits)."""
    import torch

    return torch.Generator(device=device).manual_seed(int(chip) & 0xFFFF_FFFF_FFFF_FFFF)


def run_stream_seed(run_seed: int, stream: int) -> int:
    """Seed of one of a training run's streams (:data:`SHUFFLE`, :data:`TRAIN_NOISE`,
    :data:`VALIDATION`, :data:`SENSITIVITY`): ``SeedSequence([run_seed, stream])``, 64 bits for
    the training noise, 32 for the others."""
    bits = _STREAM_BITS.get(int(stream))
    if bits is None:
        raise ValueError(f"unknown run stream {stream!r} (choose from {sorted(_STREAM_BITS)})")
    word = int(np.random.SeedSequence([int(run_seed), int(stream)]).generate_state(1, dtype=np.uint64)[0])
    return word & 0xFFFF_FFFF if bits == 32 else word


__all__ = ["READ_KEY", "SHUFFLE", "TRAIN_NOISE", "VALIDATION", "SENSITIVITY", "derive", "chip_seed", "chip_seeds",
           "layer_seed", "read_seed", "fresh_seed", "chip_generator", "run_stream_seed"]
