"""``docs/results.md`` from a results folder: ``python -m training.results report`` (see :mod:`training.results`).

Everything in the document is computed here from the CSVs the stages wrote; the checks of the
paper's claims are rules applied to those numbers (stated next to each verdict), so rerunning
``report`` after a longer run rewrites the verdicts too.

Statistics. For a sweep cell (method, sigma) the accuracy is the mean over seeds of each run's
mean over its Monte Carlo chips; the spread shown is the pooled chip-to-chip std over all chips
of all seeds (:func:`training.sweep.summarize`). A difference between two methods at one sigma
is the mean over seeds of (method A - method B), each seed's runs sharing nothing but the test
set; its 95 % interval is Welch's t interval over the seed means (with one seed: the two runs'
chip intervals combined). A claim "holds" when the interval lies above 0, "fails" when it lies
below 0, and is "not resolved" otherwise.

The authors' numbers (``../shared/reference/neft_paper_accuracy.csv``: VGG-8, 200 epochs,
1000 chips) are put beside ours for what they are: another model, data set and training length.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import tomllib
from pathlib import Path

import numpy as np

PAPER_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "neft_paper_accuracy.csv"
METHOD_ORDER = ("plain", "nit", "ovf", "irs", "correctnet")
METHOD_NAMES = {"plain": "plain", "nit": "NIT (noise injection)", "ovf": "OVF (NeFT)", "irs": "IRS (NeFT)",
                "correctnet": "CorrectNet (regulariser only)"}
PAPER_METHODS = {"W/O Noise": "plain", "W/ Noise": "nit", "OVF": "ovf", "IRS": "irs", "CorrectNet": "correctnet"}
COLORS = {"plain": "tab:gray", "nit": "tab:blue", "ovf": "tab:red", "irs": "tab:orange", "correctnet": "tab:green"}


def _pd():
    import pandas as pd

    return pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ordered(methods) -> list[str]:
    return [m for m in METHOD_ORDER if m in set(methods)] + sorted(set(methods) - set(METHOD_ORDER))


def _pct(x: float, nd: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{nd}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- statistics
def seed_means(df, method: str, sigma: float):
    """Per-seed chip-mean accuracies of one cell (``ok`` runs only), as a numpy array."""
    g = df[(df["method"] == method) & np.isclose(df["sigma"], sigma) & (df["status"] == "ok")]
    return g["acc_mean"].to_numpy(float), g


def diff_interval(df, a: str, b: str, sigma: float) -> tuple[float, float, float, int] | None:
    """(mean of A - B, 95 % low, high, seeds) at ``sigma`` (see the module docstring), or None."""
    from scipy import stats

    xa, ga = seed_means(df, a, sigma)
    xb, gb = seed_means(df, b, sigma)
    if len(xa) == 0 or len(xb) == 0:
        return None
    d = xa.mean() - xb.mean()
    if len(xa) > 1 and len(xb) > 1:
        va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
        se = math.sqrt(va + vb)
        if se == 0:
            return d, d, d, min(len(xa), len(xb))
        dof = (va + vb) ** 2 / ((va ** 2) / (len(xa) - 1) + (vb ** 2) / (len(xb) - 1)) if va + vb > 0 else 1
        h = stats.t.ppf(0.975, dof) * se
    else:  # one seed: the chip intervals of the two runs (half-widths added in quadrature)
        ha = (ga["acc_ci95_high"] - ga["acc_ci95_low"]).mean() / 2
        hb = (gb["acc_ci95_high"] - gb["acc_ci95_low"]).mean() / 2
        h = math.sqrt(ha ** 2 + hb ** 2)
    return d, d - h, d + h, min(len(xa), len(xb))


def verdict(iv) -> str:
    if iv is None:
        return "not run"
    return "holds" if iv[1] > 0 else ("fails" if iv[2] < 0 else "not resolved")


def fmt_diff(iv) -> str:
    if iv is None:
        return "–"
    return f"{100 * iv[0]:+.1f} [{100 * iv[1]:+.1f}, {100 * iv[2]:+.1f}]"


# --------------------------------------------------------------------------- loading
def load_stage(out: Path, name: str):
    pd = _pd()
    path = out / name / "results.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    return df if len(df) else None


def load_paper(path: Path | None):
    pd = _pd()
    path = Path(path) if path else PAPER_CSV
    if not path.exists():
        return None
    df = pd.read_csv(path)
    df["method_key"] = df["method"].map(PAPER_METHODS)
    return df


def scale_text(cfg: dict) -> str:
    """One line saying how big a stage's runs were (from its sweep_config.json base)."""
    train = f"first {cfg['train_limit']} training images" if cfg.get("train_limit") else "the full training set"
    test = f"first {cfg['test_limit']} test images" if cfg.get("test_limit") else "the full test set"
    noise = cfg["noise"] + (f" ({cfg['device_model']}" + (f", sigma_mode {cfg['sigma_mode']}" if cfg["noise"] != "paper" else "") + ")")
    xb = ""
    if cfg["noise"] == "crossbar":
        xb = f", ADC {cfg.get('adc_bits') or 'config'} bits, DAC {cfg.get('dac') or 'config'}, " \
             f"{cfg['weight_bits']}-bit weights on {cfg['bits_per_cell']}-bit cells"
    prec = f", {cfg['precision']} compute (autocast)" if cfg.get("precision", "float32") != "float32" else ""
    return (f"{cfg['model']} on {cfg['dataset']}, noise {noise}{xb}{prec}; {cfg['epochs']} epoch(s) of {train} "
            f"(10 % held out for checkpoint selection), batch {cfg['batch_size']}, Adam, {cfg['scheduler']} schedule; "
            f"{cfg['eval_chips']} Monte Carlo chips on the {test}")


# --------------------------------------------------------------------------- figures
def plot_sweep(summ, path: Path, title: str, xlabel: str, paper=None) -> None:
    plt = _plt()
    n = 2 if paper is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n, 3.9), squeeze=False)
    ax = axes[0][0]
    for m in _ordered(summ["method"]):
        g = summ[summ["method"] == m].sort_values("sigma")
        ax.errorbar(g["sigma"], 100 * g["acc_mean"], yerr=100 * g["acc_std_pooled"], marker="o", ms=3, capsize=2,
                    label=METHOD_NAMES.get(m, m), color=COLORS.get(m))
    ax.set(xlabel=xlabel, ylabel="accuracy over chips (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if paper is not None:
        ax2 = axes[0][1]
        for m in _ordered(paper["method_key"].dropna()):
            g = paper[paper["method_key"] == m].sort_values("sigma_d")
            label = "CorrectNet (full method)" if m == "correctnet" else METHOD_NAMES.get(m, m)
            ax2.plot(g["sigma_d"], g["accuracy_pct"], marker="s", ms=3, label=label, color=COLORS.get(m))
        ax2.set(xlabel="sigma_d", ylabel="accuracy (%)", title="authors: VGG-8 / MNIST, 200 epochs (paper)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
        lo = min(ax.get_ylim()[0], ax2.get_ylim()[0])
        ax.set_ylim(lo, 100)
        ax2.set_ylim(lo, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metric(summ, metric: str, path: Path, title: str, xlabel: str, ylabel: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.9))
    for m in _ordered(summ["method"]):
        g = summ[summ["method"] == m].sort_values("sigma")
        ax.plot(g["sigma"], g[metric], marker="o", ms=3, label=METHOD_NAMES.get(m, m), color=COLORS.get(m))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_variants(ev, path: Path, title: str, x: str | None = None, xlabel: str = "", logx: bool = False) -> None:
    """Accuracy per method against the evaluate stage's variants (categorical, or ``x`` numeric)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 3.9))
    labels = list(dict.fromkeys(ev["variant"]))
    for m in _ordered(ev["method"]):
        g = ev[ev["method"] == m].groupby("variant", sort=False)["acc_mean"].agg(["mean", "std"]).reindex(labels)
        xs = [_variant_x(ev, lab, x) for lab in labels] if x else list(range(len(labels)))
        ax.errorbar(xs, 100 * g["mean"], yerr=100 * g["std"].fillna(0), marker="o", ms=3, capsize=2,
                    label=METHOD_NAMES.get(m, m), color=COLORS.get(m))
    if x:
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
    else:
        ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=7)
    ax.set(ylabel="accuracy over chips (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _variant_x(ev, label: str, key: str) -> float:
    ov = ev[ev["variant"] == label]["overrides"].iloc[0]
    for item in str(ov).split():
        k, _, v = item.partition("=")
        if k == key:
            return float(v)
    return float("nan")


# --------------------------------------------------------------------------- sections
class Report:
    def __init__(self, out: Path, docs: Path, paper_csv):
        self.out, self.docs = out, docs
        self.figdir = docs / "results"
        self.paper = load_paper(paper_csv)
        self.suite = tomllib.loads((out / "suite.toml").read_text()) if (out / "suite.toml").exists() else {}
        self.stages = {s["name"]: s for s in self.suite.get("stages", [])}
        self.parts: list[str] = []
        self.files: dict[str, str] = {}  # what was copied or drawn, for the list at the end
        self.compute_s = 0.0

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")

    def copy_csv(self, src: Path, name: str) -> str:
        dst = self.figdir / name
        shutil.copyfile(src, dst)
        self.files[name] = str(src)
        return f"results/{name}"

    def fig(self, name: str) -> Path:
        self.files[name] = "figure"
        return self.figdir / name

    def stage_cfg(self, name: str) -> dict | None:
        p = self.out / name / "sweep_config.json"
        return json.loads(p.read_text()) if p.exists() else None

    # ----------------------------------------------------------------- sweeps
    def sweep_section(self, name: str, xlabel: str = "sigma", paper: bool = False) -> tuple | None:
        df = load_stage(self.out, name)
        sc = self.stage_cfg(name)
        if df is None or sc is None:
            return None
        from .sweep import summarize

        summarize(self.out / name / "results.csv", self.out / name)
        summ = _pd().read_csv(self.out / name / "summary.csv")
        self.compute_s += float(df["train_time_s"].fillna(0).sum() + df["eval_time_s"].fillna(0).sum())
        st = self.stages.get(name, {})
        base = sc["base"]
        n_cells, n_ok = len(df), int((df["status"] == "ok").sum())
        self.add(f"### {st.get('title') or name}\n")
        self.add(f"Scale: {scale_text(base)}. Seeds {', '.join(str(s) for s in sc['seeds'])}; "
                 f"{n_ok} of {n_cells} runs finished ok (diverged: {int((df['status'] == 'diverged').sum())}, "
                 f"failed: {int((df['status'] == 'failed').sum())}). Training {df['train_time_s'].sum() / 3600:.2f} h "
                 f"+ evaluation {df['eval_time_s'].sum() / 3600:.2f} h of single-thread CPU time.\n")
        pap = self.paper if paper else None
        if pap is not None:
            pap = pap[(pap["model"] == "VGG-8") & (pap["dataset"] == "MNIST")]
        plot_sweep(summ, self.fig(f"{name}_accuracy.png"), f"ours: {base['model']} / {base['dataset']}", xlabel, pap)
        plot_metric(summ, "ekl", self.fig(f"{name}_ekl.png"), f"EKL: {base['model']} / {base['dataset']}", xlabel,
                    "EKL (nats)")
        sigmas = sorted(summ["sigma"].unique())
        methods = _ordered(summ["method"])
        rows = []
        for m in methods:
            g = summ[summ["method"] == m].set_index("sigma")
            rows.append([METHOD_NAMES.get(m, m)] + [
                f"{_pct(g.loc[s, 'acc_mean'])} ± {_pct(g.loc[s, 'acc_std_pooled'])}" if s in g.index else "–" for s in sigmas])
        self.add(f"Accuracy over chips (%), mean over seeds ± pooled chip std ({xlabel} across):\n")
        self.add(md_table(["method"] + [f"{s:g}" for s in sigmas], rows) + "\n")
        if pap is not None and len(pap):
            prow = []
            for m in methods:
                g = pap[pap["method_key"] == m].set_index("sigma_d")
                prow.append([METHOD_NAMES.get(m, m)] + [f"{g.loc[s, 'accuracy_pct']:.1f}" if s in g.index else "–"
                                                        for s in sigmas])
            self.add("The authors' VGG-8 / MNIST numbers at the same sigma_d (paper, 200 epochs, 1000 chips; their "
                     "CorrectNet row is the full method, with compensation layers):\n")
            self.add(md_table(["method"] + [f"{s:g}" for s in sigmas], prow) + "\n")
        erow = []
        for m in methods:
            g = summ[summ["method"] == m].set_index("sigma")
            erow.append([METHOD_NAMES.get(m, m)] + [f"{g.loc[s, 'ekl']:.3f}" if s in g.index else "–" for s in sigmas]
                        + [f"{g['convergence_probability'].mean():.2f}"])
        self.add("Expected KL divergence between chips (EKL, nats; epistemic uncertainty) and convergence "
                 "probability over all cells of the method:\n")
        self.add(md_table(["method"] + [f"{s:g}" for s in sigmas] + ["P(converge)"], erow) + "\n")
        self.add(f"![accuracy]({'results/' + name + '_accuracy.png'})\n![EKL]({'results/' + name + '_ekl.png'})\n")
        self.add(f"Data: [{name}.csv]({self.copy_csv(self.out / name / 'results.csv', name + '.csv')}) (one row per run), "
                 f"[{name}_summary.csv]({self.copy_csv(self.out / name / 'summary.csv', name + '_summary.csv')}).\n")
        return df, summ

    def claims(self, df, paper_like: bool, sigma_key: float = 0.35) -> None:
        """The paper's claims as rules on a sweep (with the authors' numbers beside when ``paper_like``)."""
        sigmas = sorted(df["sigma"].unique())
        has = set(df["method"])
        rows = []

        def add(claim, a, b, s, paper_val=None):
            if a not in has or b not in has:
                return
            iv = diff_interval(df, a, b, s)
            v = verdict(iv) + (" (1 seed)" if iv is not None and iv[3] == 1 else "")
            rows.append([claim, f"{s:g}", fmt_diff(iv), "–" if paper_val is None else f"{paper_val:+.1f}", v])

        pap = self.paper if paper_like else None

        def paper_diff(a, b, s):
            if pap is None:
                return None
            g = pap[(pap["model"] == "VGG-8") & (pap["dataset"] == "MNIST") & np.isclose(pap["sigma_d"], s)]
            va, vb = g[g["method_key"] == a]["accuracy_pct"], g[g["method_key"] == b]["accuracy_pct"]
            return float(va.iloc[0] - vb.iloc[0]) if len(va) and len(vb) else None

        if paper_like:
            key = min(sigmas, key=lambda s: abs(s - sigma_key))
            add(f"**headline**: OVF beats NIT at sigma {key:g}", "ovf", "nit", key,
                paper_diff("ovf", "nit", key))
            add(f"IRS beats NIT at sigma {key:g}", "irs", "nit", key, paper_diff("irs", "nit", key))
            add(f"OVF beats CorrectNet at sigma {key:g}", "ovf", "correctnet", key, paper_diff("ovf", "correctnet", key))
        for a, b, claim in (("ovf", "nit", "OVF beats NIT"), ("irs", "nit", "IRS beats NIT"),
                            ("nit", "plain", "NIT beats plain training"), ("ovf", "correctnet", "OVF beats CorrectNet")):
            if paper_like and b == "correctnet":
                continue
            for s in sigmas:
                if s > 0:
                    add(claim, a, b, s, paper_diff(a, b, s))
        self.add("#### The paper's claims, checked\n" if paper_like else "#### The paper's claims on this noise\n")
        self.add("Difference of accuracy over chips, percentage points, mean over seeds [95 % Welch interval over "
                 "seeds; with one seed, the two runs' chip intervals combined, which leave training randomness out, "
                 "so a verdict marked *(1 seed)* is weaker]; *holds* when the whole interval is above 0, *fails* when "
                 "below, else *not resolved*. "
                 "The paper column is the authors' VGG-8 / MNIST difference at the same sigma_d.\n")
        self.add(md_table(["claim", "sigma", "ours (points)", "paper (points)", "verdict"], rows) + "\n")
        # EKL claim: NeFT lowers epistemic uncertainty
        erows = []
        for m in ("ovf", "irs"):
            for s in sigmas:
                if s <= 0 or m not in has or "nit" not in has:
                    continue
                a, _ = seed_means(df.assign(acc_mean=df["ekl"]), m, s)
                b, _ = seed_means(df.assign(acc_mean=df["ekl"]), "nit", s)
                if len(a) and len(b):
                    erows.append([METHOD_NAMES[m], f"{s:g}", f"{a.mean():.3f}", f"{b.mean():.3f}",
                                  "lower" if a.mean() < b.mean() else "higher"])
        if erows:
            self.add("EKL of the NeFT methods against noise injection (the paper reports lower epistemic "
                     "uncertainty for NeFT):\n")
            self.add(md_table(["method", "sigma", "EKL", "EKL of NIT", "NeFT is"], erows) + "\n")

    def compare_section(self, name: str, other: str) -> None:
        """Every method of stage ``other`` against every method of sweep ``name`` at their shared sigmas."""
        a_df, b_df = load_stage(self.out, name), load_stage(self.out, other)
        if a_df is None or b_df is None:
            return
        tag = f" [{other}]"
        both = _pd().concat([a_df, b_df.assign(method=b_df["method"] + tag)], ignore_index=True)
        rows = []
        shared = [s for s in sorted(a_df["sigma"].unique()) if np.isclose(b_df["sigma"], s).any()]
        for s in shared:
            for o in _ordered(b_df["method"].unique()):
                for m in _ordered(a_df["method"].unique()):
                    iv = diff_interval(both, o + tag, m, s)
                    v = verdict(iv) + (" (1 seed)" if iv is not None and iv[3] == 1 else "")
                    rows.append([f"{METHOD_NAMES.get(o, o)} ({other}) beats {METHOD_NAMES.get(m, m)} (this stage)",
                                 f"{s:g}", fmt_diff(iv), v])
        if rows:
            self.add(f"#### Against stage `{other}`\n")
            self.add("Difference of accuracy over chips, percentage points [95 % interval, as above]; *holds* when "
                     "the whole interval is above 0, *fails* when below, else *not resolved*.\n")
            self.add(md_table(["claim", "sigma", "difference (points)", "verdict"], rows) + "\n")

    # ----------------------------------------------------------------- evaluate stages
    def evaluate_section(self, name: str, numeric: str | None = None, xlabel: str = "", logx: bool = False) -> None:
        ev = load_stage(self.out, name)
        if ev is None:
            return
        st = self.stages.get(name, {})
        self.compute_s += float(ev["eval_time_s"].fillna(0).sum())
        ok = ev[ev["status"] == "ok"]
        self.add(f"### {st.get('title') or name}\n")
        src = st.get("source", "?")
        self.add(f"Runs of `{src}` (sigma {', '.join(f'{s:g}' for s in sorted(ok['sigma'].unique()))}, seeds "
                 f"{', '.join(str(s) for s in sorted(ok['seed'].unique()))}) evaluated again under each setting, "
                 f"{int(ok['chips'].max()) if len(ok) else 0} chips per row; {len(ok)} of {len(ev)} evaluations ok; "
                 f"{ev['eval_time_s'].sum() / 3600:.2f} h of CPU time.\n")
        labels = list(dict.fromkeys(ok["variant"]))
        rows = []
        for s in sorted(ok["sigma"].unique()):
            for m in _ordered(ok["method"]):
                g = ok[(ok["method"] == m) & np.isclose(ok["sigma"], s)]
                cells = []
                for lab in labels:
                    h = g[g["variant"] == lab]
                    cells.append(f"{_pct(h['acc_mean'].mean())} ± {_pct(h['acc_std'].mean())}" if len(h) else "–")
                rows.append([METHOD_NAMES.get(m, m), f"{s:g}"] + cells)
        self.add("Accuracy over chips (%), mean over seeds ± mean chip std:\n")
        self.add(md_table(["method", "sigma"] + labels, rows) + "\n")
        for s in sorted(ok["sigma"].unique()):
            fig = f"{name}_sigma{s:g}.png"
            plot_variants(ok[np.isclose(ok["sigma"], s)], self.fig(fig), f"{name}, sigma {s:g}", numeric, xlabel, logx)
            self.add(f"![{name}](results/{fig})\n")
        self.add(f"Data: [{name}.csv]({self.copy_csv(self.out / name / 'results.csv', name + '.csv')}).\n")

    def writeverify_section(self, name: str) -> None:
        folder = self.out / name
        if not (folder / "budget.csv").exists():
            return
        st = self.stages.get(name, {})
        pd = _pd()
        b = pd.read_csv(folder / "budget.csv")
        cfgj = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
        self.add(f"### {st.get('title') or name}\n")
        opts = cfgj.get("options", {})
        self.add(f"Runs of `{st.get('source')}` at sigma {st.get('sigma')}, seed {st.get('seed', 0)}; "
                 f"`python -m training.writeverify {' '.join(st.get('args', []))}`"
                 + (f" ({opts.get('chips')} chips per setting)" if opts.get("chips") else "") + ".\n")
        rows = []
        for _, r in b.iterrows():
            m = str(r["method"])
            rows.append([METHOD_NAMES.get(m, m), _pct(r["clean_acc"]), _pct(r["quant_acc"]), _pct(r["acc_none"]),
                         _pct(r["target_acc"]), _fmt_energy(r.get("min_energy_J")), _fmt_time(r.get("min_latency_s")),
                         _setting(r, "energy"), _setting(r, "latency")])
        self.add("Accuracy (%) with no write-verify, and the least programming energy and latency of a "
                 "write-verify setting whose mean accuracy reaches the target (column *target*; energy and latency "
                 "are per programmed model, means over chips, from the cost model of `cimsim.cost`):\n")
        self.add(md_table(["method", "clean", "quantized, ideal cells", "no write-verify", "target",
                           "least energy", "least latency", "setting of least energy", "setting of least latency"],
                          rows) + "\n")
        for png in ("acc_vs_energy.png", "acc_vs_latency.png"):
            if (folder / png).exists():
                shutil.copyfile(folder / png, self.fig(f"{name}_{png}"))
                self.add(f"![{png}](results/{name}_{png})\n")
        self.add(f"Data: [{name}_budget.csv]({self.copy_csv(folder / 'budget.csv', name + '_budget.csv')}), "
                 f"[{name}_settings.csv]({self.copy_csv(folder / 'writeverify.csv', name + '_settings.csv')}).\n")


def _setting(r, which: str) -> str:
    """The write-verify setting of a budget row's least-``which`` column, in words."""
    pol = r.get(f"{which}_policy")
    if not isinstance(pol, str) or not pol:
        return "–"
    if pol == "none":
        return "none"
    tol = f"{r.get(f'{which}_tolerance')} {r.get(f'{which}_tolerance_unit')}"
    if pol == "full":
        return f"full, tol {tol}"
    return f"selective ({r.get(f'{which}_sensitivity')}), {100 * float(r.get(f'{which}_fraction')):.0f} % of weights, tol {tol}"


def _fmt_unit(x, units: tuple[tuple[str, float], ...]) -> str:
    """``x`` in the largest of ``units`` (name, factor; descending) it reaches, or "not reached"."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "not reached"
    if math.isnan(x):
        return "not reached"
    for unit, f in units:
        if abs(x) >= f or unit == units[-1][0]:
            return f"{x / f:.3g} {unit}"
    return f"{x:.3g}"


def _fmt_energy(x) -> str:
    return _fmt_unit(x, (("J", 1), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9), ("pJ", 1e-12)))


def _fmt_time(x) -> str:
    return _fmt_unit(x, (("s", 1), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)))


def write_report(out: Path, docs: Path, paper_csv=None) -> int:
    """Write ``docs/results.md`` and ``docs/results/*`` from the stages found in ``out`` (see module doc)."""
    import sys

    if not (out / "suite.toml").exists():
        print(f"python -m training.results report: error: {out}: no suite.toml (run `python -m training.results run` first)",
              file=sys.stderr)
        return 2
    tmp_docs = docs / ".results.tmp"
    if tmp_docs.exists():
        shutil.rmtree(tmp_docs)
    (tmp_docs / "results").mkdir(parents=True)
    rep = Report(out, tmp_docs, paper_csv)
    rep.figdir = tmp_docs / "results"
    suite = rep.suite
    rep.add("# Results\n")
    rep.add(f"Generated by `python -m training.results report --out {out}` from the suite "
            f"`{suite.get('name', '?')}` ({out}/suite.toml, run with `python -m training.results run --suite "
            f"{suite.get('name', '?')} --out {out}`). Do not edit by hand: rerun the two commands.\n")
    if suite.get("description"):
        rep.add(suite["description"].strip() + "\n")
    notes = Path(__file__).with_name("suites") / f"{suite.get('name', '')}_notes.md"
    if notes.exists():  # the reading of the numbers, written by a person (training/suites/<suite>_notes.md)
        rep.add(notes.read_text())
    kinds = {s["name"]: s["kind"] for s in suite.get("stages", [])}
    for name, kind in kinds.items():  # in the suite's order
        st = rep.stages[name]
        if kind == "sweep":
            base = (rep.stage_cfg(name) or {}).get("base", {})
            paper_like = base.get("noise") == "paper"
            xlabel = "sigma_d" if paper_like else ("sigma (x fitted spread)" if base.get("sigma_mode") == "multiply" else "sigma")
            res = rep.sweep_section(name, xlabel, paper=paper_like)
            if res is not None and st.get("source"):
                rep.compare_section(name, st["source"])
            elif res is not None:
                rep.claims(res[0], paper_like)
        elif kind == "evaluate":
            numeric = "read_time_s" if all("read_time_s" in v for v in st.get("variants", [])) else None
            rep.evaluate_section(name, numeric, "read time after programming (s)" if numeric else "", logx=bool(numeric))
        elif kind == "writeverify":
            rep.writeverify_section(name)
    rep.add(f"---\nTotal single-thread CPU time behind these numbers: {rep.compute_s / 3600:.2f} h "
            f"(training and evaluation as logged by the runs; write-verify not included).\n")
    (tmp_docs / "results.md").write_text("\n".join(rep.parts))
    # swap in: results/ and results.md replaced together
    final_dir, final_md = docs / "results", docs / "results.md"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    (tmp_docs / "results").replace(final_dir)
    (tmp_docs / "results.md").replace(final_md)
    shutil.rmtree(tmp_docs)
    print(f"wrote {final_md} and {len(list(final_dir.iterdir()))} files in {final_dir}", file=sys.stderr)
    return 0
