"""Monte Carlo evaluation over programmed chips, and the metrics the field reports.

A chip is one frozen draw of every noisy weight (:meth:`training.variation.Variation.chip`),
held for the whole test set; BatchNorm in eval mode; side heads dropped. Chip ``i`` of a run with
seed ``s`` is drawn from a torch generator seeded by :func:`chip_seed` ``(s, i)`` =
``SeedSequence(s).spawn(i + 1)[i]`` (64-bit state), so any one chip can be re-made alone (on the
same kind of torch device: CPU and CUDA generators give different streams).

Metrics over ``T`` chips (``p_t [N, C]`` softmax of chip t, ``p_mean`` their average):

* accuracy per chip; ``acc_mean``, ``acc_std`` (ddof 1), ``acc_ci95`` = mean -+ t(0.975, T-1) * std / sqrt(T)
  (the 95 % confidence interval of the mean over chips), ``acc_min``, ``acc_p05`` (5th percentile);
* ``ekl``: mean over inputs of ``(1/T) sum_t KL(p_t || p_mean)`` = ``H(p_mean) - mean_t H(p_t)``
  (the mutual information between prediction and chip; 0 when all chips agree), in nats;
* ``confidence``: mean over chips and inputs of ``max_c p_t``;
* convergence probability (over seeds, :func:`convergence_probability`): the share of runs that
  did not diverge and whose best clean validation accuracy is at least
  ``chance + converge_frac * (1 - chance)`` (``chance = 1 / classes``; converge_frac default 0.5).

Efficiency: each chip's realised weights are drawn once, then the test set runs through in
batches of ``batch_size`` with the data already on the device; the per-input statistics are
accumulated on the device in float64 (memory ``O(N * C)``, independent of T).
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import ImageSet
from .variation import Variation, make_generator


def chip_seed(seed: int, i: int) -> int:
    """64-bit seed of Monte Carlo chip ``i`` of a run with seed ``seed`` (child i of ``SeedSequence(seed)``)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(i),))
    return int(ss.generate_state(1, dtype=np.uint64)[0])


class MCAccumulator:
    """Streams chips' softmax outputs into the metrics above.

    ``add(probs [N, C], y [N])`` once per chip (the full test set, or successive batches of it via
    ``add_batch`` followed by ``end_chip``); ``result()`` gives the metrics dict.
    """

    def __init__(self, n: int, num_classes: int, device: torch.device | str = "cpu"):
        self.n = n
        self.sum_p = torch.zeros(n, num_classes, dtype=torch.float64, device=device)
        self.sum_h = torch.zeros(n, dtype=torch.float64, device=device)
        self.accs: list[float] = []
        self.conf_sum = 0.0
        self._correct = 0
        self._seen = 0
        self._conf = 0.0

    def add_batch(self, start: int, probs: torch.Tensor, y: torch.Tensor) -> None:
        """Softmax probabilities ``[b, C]`` of inputs ``start .. start+b-1`` under the current chip."""
        p = probs.to(torch.float64)
        b = p.shape[0]
        self.sum_p[start : start + b] += p
        self.sum_h[start : start + b] += -(p * torch.log(p.clamp_min(1e-300))).sum(1)
        self._correct += int((p.argmax(1) == y).sum())
        self._conf += float(p.max(1).values.sum())
        self._seen += b

    def end_chip(self) -> None:
        if self._seen != self.n:
            raise ValueError(f"a chip must see all {self.n} inputs, saw {self._seen}")
        self.accs.append(self._correct / self.n)
        self.conf_sum += self._conf / self.n
        self._correct, self._seen, self._conf = 0, 0, 0.0

    def add(self, probs: torch.Tensor, y: torch.Tensor) -> None:
        self.add_batch(0, probs, y)
        self.end_chip()

    def result(self) -> dict:
        T = len(self.accs)
        if T == 0:
            raise ValueError("no chips added")
        acc = np.asarray(self.accs)
        pm = self.sum_p / T
        h_mean = -(pm * torch.log(pm.clamp_min(1e-300))).sum(1)
        ekl = float(torch.clamp(h_mean - self.sum_h / T, min=0).mean())
        std = float(acc.std(ddof=1)) if T > 1 else 0.0
        from scipy.stats import t as student

        half = float(student.ppf(0.975, T - 1)) * std / math.sqrt(T) if T > 1 else 0.0
        mean = float(acc.mean())
        return {
            "chips": T,
            "acc_mean": mean,
            "acc_std": std,
            "acc_ci95_low": mean - half,
            "acc_ci95_high": mean + half,
            "acc_min": float(acc.min()),
            "acc_p05": float(np.percentile(acc, 5)),
            "ekl": ekl,
            "confidence": self.conf_sum / T,
        }


def metrics_from_probs(probs: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> dict:
    """Metrics of ``probs [T, N, C]`` (softmax per chip) against labels ``y [N]``."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(y)
    acc = MCAccumulator(probs.shape[1], probs.shape[2])
    for p in probs:
        acc.add(p, y)
    out = acc.result()
    out["acc_per_chip"] = list(acc.accs)
    return out


@dataclass
class MCResult:
    """Output of :func:`evaluate_mc`: the metrics dict and the accuracy of every chip ``[T]``."""

    metrics: dict
    acc_per_chip: np.ndarray


@torch.no_grad()
def evaluate_mc(model: nn.Module, variation: Variation, data: ImageSet, sigma: float, chips: int, seed: int,
                batch_size: int = 1000, device: torch.device | str = "cpu", progress: bool = False) -> MCResult:
    """Monte Carlo accuracy over ``chips`` programmed chips at variation ``sigma`` (see module doc).

    Chips whose backend leaves the weights untouched (e.g. paper noise at sigma 0) are evaluated
    once and counted ``chips`` times (all identical).
    """
    was = model.training
    model.eval()
    dev = torch.device(device)
    data = data.to(dev)
    n = len(data)
    acc = MCAccumulator(n, data.num_classes, dev)
    t0 = time.time()
    logits_cache = None
    for i in range(chips):
        gen = make_generator(chip_seed(seed, i), dev)
        chip = variation.chip(model, sigma, gen, heads=False)
        if not chip and logits_cache is not None:
            for s, p in logits_cache:
                acc.add_batch(s, p, data.y[s : s + p.shape[0]])
            acc.end_chip()
            continue
        cache = []
        for s in range(0, n, batch_size):
            x, y = data.batch(slice(s, s + batch_size), dev)
            p = torch.softmax(variation.forward_chip(model, chip, x).float(), 1)
            acc.add_batch(s, p, y)
            if not chip:
                cache.append((s, p))
        acc.end_chip()
        if not chip:
            logits_cache = cache
        if progress and (i + 1) % max(1, chips // 10) == 0:
            print(f"eval chip {i + 1}/{chips} acc {acc.accs[-1]:.4f} {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    model.train(was)
    return MCResult(acc.result(), np.asarray(acc.accs))


@torch.no_grad()
def clean_accuracy(model: nn.Module, data: ImageSet, batch_size: int = 1000, device: torch.device | str = "cpu") -> float:
    """Accuracy of the model with its clean weights (eval mode, no heads)."""
    was = model.training
    model.eval()
    correct = 0
    for s in range(0, len(data), batch_size):
        x, y = data.batch(slice(s, s + batch_size), device)
        correct += int((model(x).argmax(1) == y).sum())
    model.train(was)
    return correct / max(1, len(data))


def converged(clean_val_acc: float, num_classes: int, converge_frac: float = 0.5, diverged: bool = False) -> bool:
    """A run converged: not diverged and clean val accuracy >= chance + converge_frac * (1 - chance)."""
    if diverged or clean_val_acc is None or not math.isfinite(clean_val_acc):
        return False
    chance = 1.0 / num_classes
    return clean_val_acc >= chance + converge_frac * (1 - chance)


def convergence_probability(flags: Sequence[bool]) -> float:
    """Share of runs (seeds) that converged (see :func:`converged`); NaN for no runs."""
    flags = list(flags)
    return float(np.mean(flags)) if flags else float("nan")


def plot_histogram(acc_per_chip: np.ndarray, path: str | Path, title: str = "") -> None:
    """Histogram of accuracy over chips, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(100 * np.asarray(acc_per_chip), bins=min(30, max(5, len(acc_per_chip) // 5)), color="tab:blue", alpha=0.8)
    ax.set_xlabel("test accuracy per chip (%)")
    ax.set_ylabel("chips")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
