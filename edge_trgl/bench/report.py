"""The benchmark report: <results>/REPORT.md (and PNG plots when matplotlib is installed),
rebuilt from the result JSON files alone."""

from __future__ import annotations

import io
import math
import os
import re
import statistics
from pathlib import Path

from ..atomic import atomic_write_bytes
from .matrix import QUICK_SUITE, SECTIONS
from .results import load_results
from .tables import (Group, fmt_mb, fmt_pct, fmt_stat, group_results, md_table, method_label,
                     method_order, model_depth, numeric_leaves, setting_of, setting_text, summary_stats)

SUITE_ORDER = ("accuracy", "memory", "throughput")

_ACC_KEYS = ("model", "data", "train_fraction", "epochs", "batch_size", "backend", "device")
_MEM_KEYS = ("data", "backend", "device")
_TPUT_KEYS = ("model", "data", "batch_size", "epochs", "backend", "device")


def _end_to_end_of(g, groups):
    """The end-to-end row a throughput row is measured against: plain (not checkpointed), and
    compiled where the row is (--compile: both sides get the compiler's speed-up and its cost)."""
    compiled = g.label.endswith(", compiled")
    return next((e for e in groups if e.label.startswith("end-to-end") and "checkpointed" not in
                 e.label and e.label.endswith(", compiled") == compiled), None)


def steady_loop_s(result: dict) -> float | None:
    """Training-loop seconds per network epoch with every module's first epoch left out: what
    the steps cost once warm (--compile pays its compile in a module's first epoch). None for a
    run with a module of one epoch or no per-epoch log."""
    by_module: dict[tuple, list[float]] = {}
    for e in result.get("metrics") or []:
        if e.get("seconds") is not None:
            by_module.setdefault((e.get("lap", 0), e.get("module")), []).append(e["seconds"])
    if not by_module or any(len(v) < 2 for v in by_module.values()):
        return None
    laps = len({lap for lap, _ in by_module})
    return sum(sum(v[1:]) / (len(v) - 1) for v in by_module.values()) / laps


def _suite_order(names) -> list[str]:
    def key(n):
        if n in SUITE_ORDER:
            return (0, SUITE_ORDER.index(n), n)
        return (2 if n == QUICK_SUITE else 1, 0, n)
    return sorted(names, key=key)


class _Report:
    def __init__(self, suites: dict, results_dir: Path, plots: bool):
        self.suites, self.root, self.plots_wanted = suites, results_dir, plots
        self.lines: list[str] = []
        # the small-data goals' verdicts, gathered while its section renders, and where in the
        # headline they go (set by headline(); the section renders after it)
        self.headline_goals: list[str] = []
        self.headline_goals_at: int | None = None
        self.plot_note: str | None = None
        self.plt = None
        if plots:
            try:
                import matplotlib
                matplotlib.use("Agg")
                import matplotlib.pyplot as plt
                self.plt = plt
            except ImportError:
                self.plot_note = ("Plots were skipped: matplotlib is not installed (install the "
                                  "`plot` extra: `pip install edge-trgl[plot]`).")
        else:
            self.plot_note = "Plots were skipped (--no-plots)."

    # --- helpers ---------------------------------------------------------------------------
    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def save_plot(self, fig, name: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        self.plt.close(fig)
        atomic_write_bytes(self.root / "plots" / name, buf.getvalue())
        return f"plots/{name}"

    # --- sections --------------------------------------------------------------------------
    def header(self) -> None:
        all_results = [r for s in self.suites.values() for r in s["results"]]
        host = all_results[0].get("host") or {}
        loads = [x for r in all_results for x in (r.get("loadavg_start") or [None])[:1] +
                 (r.get("loadavg_end") or [None])[:1] if x is not None]
        pk = host.get("packages", {})
        threads = sorted({r["measurements"].get("torch_threads") for r in all_results
                          if r["measurements"].get("torch_threads")})
        self.add("# edge-trgl benchmark report", "",
                 "Generated from the JSON files next to this report by `edge-trgl bench report "
                 f"{self.root}` (or `python benchmarks/report.py`); do not edit by hand.", "",
                 f"- Machine: {host.get('cpu_model', '?')}, {host.get('cpu_count', '?')} CPUs "
                 f"visible, torch threads {', '.join(map(str, threads)) or '?'}; "
                 f"{host.get('platform', '')}",
                 f"- Software: Python {host.get('python', '?')}, "
                 + ", ".join(f"{k} {v}" for k, v in pk.items())
                 + (f"; git {host.get('git', {}).get('commit', '')[:10]}"
                    + (" (with uncommitted changes)" if host.get("git", {}).get("dirty") else "")
                    if host.get("git", {}).get("commit") else ""),
                 "- Load average (1 min) at the start/end of runs: "
                 + (f"{min(loads):.2f} to {max(loads):.2f}" if loads else "not recorded")
                 + ". The machine is shared with other jobs, so times and samples/s are "
                 "indicative; memory figures do not depend on load.",
                 "- **Peak RSS** is the kernel's high-water mark (VmHWM) of the training child "
                 "process alone, everything included (Python, torch, the dataset, feature-cache "
                 "I/O), polled from outside every 20 ms and maxed with the run's own final reading. "
                 "`os.wait4`'s ru_maxrss is recorded too but not used as the figure: exec folds the "
                 "parent's high-water mark into it, and a run that resets VmHWM per module "
                 "(`--module-peaks`) leaves it with the peak since the last reset only. "
                 "**Baseline** is the same figure for a child that "
                 "only imports torch, edge-trgl and the backend. **Data loading** is a child that "
                 "only loads and splits the dataset. **Training-phase peak** (module-wise runs) is "
                 "the largest of the per-module peaks the run reports itself (summary.json "
                 "`modules[].measured_peak_bytes`). **Process "
                 "tree** sums the RSS of the child and its children, sampled every 20 ms: for "
                 "`--backend ort` the run's own figure is its training phase (torch-free "
                 "orchestrator + largest trainer process), and the tree also shows the set-up "
                 "child (torch + onnx) that prepares the ONNX artifacts.",
                 "- Accuracy is on the full test set; spreads are (min–max) over seeds/repeats, "
                 "with the median in front.", "")

    def timings(self) -> None:
        rows = []
        for name in _suite_order(self.suites):
            meta = self.suites[name]["meta"]
            results = self.suites[name]["results"]
            total = sum(r["measurements"]["wall_s"] for r in results)
            for inv in meta.get("invocations", []):
                rows.append([name, f"`{inv.get('command', '?')}`", inv.get("started_at", "?"),
                             f"{inv.get('seconds', 0) / 60:.1f} min",
                             f"{len(inv.get('rows_run', []))} run, "
                             f"{len(inv.get('rows_skipped', []))} skipped, "
                             f"{len(inv.get('rows_failed', []))} failed"
                             + (f", {len(inv['rows_stopped'])} stopped to resume"
                                if inv.get("rows_stopped") else "")
                             + ("" if inv.get("complete", True) else ", interrupted")])
            rows.append([name, "(sum of the suite's run wall times)", "", f"{total / 60:.1f} min",
                         f"{len(results)} results"])
        self.add("## Benchmark commands and their run time", "", *md_table(
            ["suite", "command", "started", "run time", "rows"], rows), "")

    def headline(self) -> None:
        acc_suite = next((n for n in _suite_order(self.suites)
                          if "accuracy" in self._sections(n)), None)
        mem_suite = next((n for n in _suite_order(self.suites)
                          if "memory" in self._sections(n)), None)
        small_data = any("small_data" in self._sections(n) for n in self.suites)
        if acc_suite is None and mem_suite is None and not small_data:
            return
        self.add("## Headline", "")
        self.headline_goals_at = len(self.lines)
        if acc_suite is not None:
            self.add(f"From suite `{acc_suite}`:", "")
            self.accuracy_table(self.suites[acc_suite]["results"], headline=True)
        if mem_suite is not None:
            goals = self.memory_goals(self.suites[mem_suite]["results"])
            if goals:
                self.add(f"Memory (suite `{mem_suite}`):", "", *goals, "")

    def _sections(self, suite: str) -> list[str]:
        meta = self.suites[suite]["meta"]
        return meta.get("sections") or list(SECTIONS)

    # accuracy ------------------------------------------------------------------------------
    def accuracy_table(self, results: list[dict], headline: bool = False) -> list[tuple]:
        groups = [g for g in group_results(results) if g.runs]
        settings: dict[tuple, list[Group]] = {}
        for g in groups:
            settings.setdefault(setting_of(g, _ACC_KEYS), []).append(g)
        out = []
        for setting, gs in settings.items():
            gs.sort(key=lambda g: method_order(g.label))
            e2e = next((g for g in gs if g.label.startswith("end-to-end")), None)
            e2e_peak = e2e.stat("peak_rss_bytes")["median"] if e2e else None
            rows = []
            for g in gs:
                peak = g.stat("peak_rss_bytes")
                cfg = g.cfg
                tau = cfg.get("tau")
                ratio = f"{peak['median'] / e2e_peak:.2f}" if (e2e_peak and peak) else "-"
                best = g.stat("best_module")
                rows.append([g.label, str(g.num_modules),
                             "-" if cfg.get("scheme") == "e2e" else ("inf" if math.isinf(tau) else f"{tau:g}"),
                             fmt_stat(g.stat("final_test_acc"), fmt_pct),
                             fmt_stat(g.stat("best_test_acc"), fmt_pct)
                             + (f" (m{best['median']:.0f})" if best and best["n"] and cfg.get("scheme") != "e2e" else ""),
                             fmt_mb(peak["median"]) if peak else "-", ratio,
                             fmt_stat(g.stat("wall_s"), lambda v: f"{v:.0f}", spread=False),
                             str(len(g.runs)) + (f" (+{len(g.failed)} failed)" if g.failed else "")])
            self.add(f"Setting: {setting_text(_ACC_KEYS, setting)}.", "", *md_table(
                ["method", "modules", "tau", "test acc % of last module", "test acc % of best-val module",
                 "peak RSS MB", "RSS / end-to-end", "wall s per run", "runs (seeds)"], rows), "")
            out.append((setting, gs))
        return out

    def accuracy_section(self, name: str, results: list[dict]) -> None:
        self.add(f"### Accuracy ({name})", "",
                 "Same epoch budget for every method: each module of a module-wise run trains for "
                 "`epochs` epochs on the cached outputs of the modules before it; end-to-end trains "
                 "the whole network for `epochs` epochs. So at equal epochs a module-wise run makes "
                 "K times as many optimizer steps as end-to-end, each on one module (its compute "
                 "per network epoch is in the throughput table). tau = inf is plain greedy "
                 "training (no transport regularisation).", "")
        settings = self.accuracy_table(results)
        for setting, gs in settings:
            by_k: dict[int, list[Group]] = {}
            for g in gs:
                if not g.label.startswith("end-to-end"):
                    by_k.setdefault(g.num_modules, []).append(g)
            e2e = [g for g in gs if g.label.startswith("end-to-end")]
            for k, kgs in sorted(by_k.items()):
                rows = []
                for g in [*kgs, *e2e]:
                    stats = g.module_stats()
                    if g in e2e:  # only the last head of an end-to-end run is trained
                        stats = [None] * (k - 1) + stats[-1:]
                    rows.append([g.label, *[fmt_stat(s, fmt_pct) for s in stats[:k]]])
                self.add(f"Test accuracy (%) of every module's head, {k} modules "
                         f"({setting_text(_ACC_KEYS, setting)}):", "",
                         *md_table(["method", *[f"m{i}" for i in range(k)]], rows), "")
            if self.plt is not None:
                self.plot_accuracy(name, setting, gs, by_k, e2e)

    def plot_accuracy(self, name, setting, gs, by_k, e2e) -> None:
        plt = self.plt
        tag = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(str(v) for v in setting[:5] if v is not None)).strip("-")
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for g in gs:
            peak, acc = g.stat("peak_rss_bytes"), g.stat("final_test_acc")
            if not peak or not acc:
                continue
            ax.errorbar(peak["median"] / 1e6, 100 * acc["median"],
                        yerr=[[100 * (acc["median"] - acc["min"])], [100 * (acc["max"] - acc["median"])]],
                        xerr=[[(peak["median"] - peak["min"]) / 1e6], [(peak["max"] - peak["median"]) / 1e6]],
                        fmt="o", capsize=3, label=g.label)
        ax.set_xlabel("peak RSS of the training process (MB)")
        ax.set_ylabel("test accuracy of the last module (%)")
        ax.set_title(f"Peak memory vs accuracy\n{setting_text(_ACC_KEYS, setting)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        rel = self.save_plot(fig, f"{name}-{tag}-memory_vs_accuracy.png")
        self.add(f"![peak memory vs accuracy]({rel})", "")
        if not by_k:
            return
        from matplotlib.ticker import MaxNLocator
        fig, axes = plt.subplots(1, len(by_k), figsize=(5.5 * len(by_k), 4), squeeze=False)
        for ax, (k, kgs) in zip(axes[0], sorted(by_k.items())):
            for g in kgs:
                stats = g.module_stats()[:k]
                xs = [i for i, s in enumerate(stats) if s]
                ys = [100 * stats[i]["median"] for i in xs]
                lo = [100 * (stats[i]["median"] - stats[i]["min"]) for i in xs]
                hi = [100 * (stats[i]["max"] - stats[i]["median"]) for i in xs]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=g.label)
            for g in e2e:
                s = g.stat("final_test_acc")
                if s:
                    ax.errorbar([k - 1], [100 * s["median"]],
                                yerr=[[100 * (s["median"] - s["min"])], [100 * (s["max"] - s["median"])]],
                                marker="*", markersize=12, capsize=3, linestyle="none", label=g.label)
            ax.set_xlabel("module index")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{k} modules", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Accuracy per module: TRGL vs greedy vs end-to-end\n"
                     f"{setting_text(_ACC_KEYS, setting)}", fontsize=9, y=1.06)
        rel = self.save_plot(fig, f"{name}-{tag}-accuracy_per_module.png")
        self.add(f"![accuracy per module]({rel})", "")

    # memory --------------------------------------------------------------------------------
    def _memory_points(self, results) -> dict:
        """{(data, backend, device): {(model, batch): {label: Group}}}"""
        out: dict = {}
        for g in group_results(results):
            if not g.runs:
                continue
            cfg = g.cfg
            out.setdefault(setting_of(g, _MEM_KEYS), {}).setdefault(
                (cfg["model"], cfg["batch_size"]), {})[g.label] = g
        return out

    def memory_goals(self, results) -> list[str]:
        lines = []
        for setting, points in self._memory_points(results).items():
            where = setting_text(_MEM_KEYS, setting)
            for (model, batch), methods in sorted(points.items(), key=lambda kv: (model_depth(kv[0][0]) or 0, kv[0][1])):
                # the goals are the method's: a --compile run also holds the compiler (shown in
                # the tables, not judged)
                methods = {k: g for k, g in methods.items() if not k.endswith(", compiled")}
                e2e = methods.get("end-to-end")
                for label, g in methods.items():
                    if "block-wise" in label and e2e and model == "resnet56" and batch == 128:
                        a, b = g.stat("peak_rss_bytes")["median"], e2e.stat("peak_rss_bytes")["median"]
                        base = g.stat("baseline_rss_bytes")
                        above = ""
                        if base:
                            above = (f"; above the {fmt_mb(base['median'])} MB import baseline: "
                                     f"{(a - base['median']) / (b - base['median']):.2f}")
                        lines.append(f"- {label} / end-to-end peak RSS at ResNet-56, batch 128 "
                                     f"({where}): **{a / b:.2f}** ({fmt_mb(a)} MB vs {fmt_mb(b)} MB"
                                     f"{above}); goal <= 0.40: {'met' if a / b <= 0.40 else 'not met'}.")
                ckpt = methods.get("end-to-end, checkpointed")
                for label, g in methods.items():
                    if (("block-wise" in label or "K=" in label) and ckpt and model == "resnet56"
                            and batch == 128):
                        a, b = g.stat("peak_rss_bytes")["median"], ckpt.stat("peak_rss_bytes")["median"]
                        lines.append(f"- {label} / end-to-end with gradient checkpointing (the "
                                     f"alternative a user would pick to save memory) at ResNet-56, "
                                     f"batch 128 ({where}): **{a / b:.2f}** ({fmt_mb(a)} MB vs "
                                     f"{fmt_mb(b)} MB).")
            depth_lines = []
            by_method: dict[tuple, dict] = {}
            for (model, batch), methods in points.items():
                for label, g in methods.items():
                    if model_depth(model):
                        by_method.setdefault((label, batch), {})[model_depth(model)] = g
            for (label, batch), depths in sorted(by_method.items(), key=lambda kv: (method_order(kv[0][0]), kv[0][1])):
                if 20 in depths and 110 in depths and "block-wise" in label:
                    a = depths[110].stat("peak_rss_bytes")["median"]
                    b = depths[20].stat("peak_rss_bytes")["median"]
                    depth_lines.append(
                        f"- {label}, batch {batch}: ResNet-110 peak / ResNet-20 peak = **{a / b:.2f}** "
                        f"({fmt_mb(a)} MB vs {fmt_mb(b)} MB; {where}); goal within 10%: "
                        f"{'met' if abs(a / b - 1) <= 0.10 else 'not met'}.")
            lines += depth_lines
        return lines

    def memory_section(self, name: str, results: list[dict]) -> None:
        self.add(f"### Peak memory ({name})", "")
        for setting, points in self._memory_points(results).items():
            labels = sorted({l for m in points.values() for l in m}, key=method_order)
            others = [l for l in labels if not l.startswith("end-to-end")]
            header = ["model", "batch", *[f"{l} MB" for l in labels],
                      *[f"{l} / e2e (above baseline)" for l in others]]
            rows = []
            for (model, batch), methods in sorted(points.items(), key=lambda kv: (model_depth(kv[0][0]) or 0, kv[0][1])):
                e2e = methods.get("end-to-end")
                cells = [model, str(batch)]
                for l in labels:
                    g = methods.get(l)
                    cells.append(fmt_stat(g.stat("peak_rss_bytes"), fmt_mb) if g else "-")
                for l in others:
                    g = methods.get(l)
                    if not (g and e2e):
                        cells.append("-")
                        continue
                    a = g.stat("peak_rss_bytes")["median"]
                    b = e2e.stat("peak_rss_bytes")["median"]
                    base = (g.stat("baseline_rss_bytes") or {}).get("median")
                    cells.append(f"{a / b:.2f}" + (f" ({(a - base) / (b - base):.2f})" if base and b > base else ""))
                rows.append(cells)
            self.add(f"Whole-process peak RSS ({setting_text(_MEM_KEYS, setting)}); the ratio in "
                     f"brackets subtracts the import baseline from both sides:", "",
                     *md_table(header, rows), "")
            # what the figures are made of
            detail = []
            for (model, batch), methods in sorted(points.items(), key=lambda kv: (model_depth(kv[0][0]) or 0, kv[0][1])):
                for l in labels:
                    g = methods.get(l)
                    if not g:
                        continue
                    detail.append([model, str(batch), l,
                                   fmt_stat(g.stat("peak_rss_bytes"), fmt_mb),
                                   fmt_stat(g.stat("baseline_rss_bytes"), fmt_mb, spread=False),
                                   fmt_stat(g.stat("data_loading_peak_rss_bytes"), fmt_mb, spread=False),
                                   fmt_stat(g.stat("training_phase_peak_rss_bytes"), fmt_mb),
                                   fmt_stat(g.stat("self_reported_peak_rss_bytes"), fmt_mb),
                                   fmt_stat(g.stat("ru_maxrss_bytes"), fmt_mb),
                                   fmt_stat(g.stat("tree_rss_peak_bytes"), fmt_mb),
                                   fmt_stat(g.stat("wall_s"), lambda v: f"{v:.0f}", spread=False),
                                   str(len(g.runs))])
            self.add("Where the peak comes from (MB):", "", *md_table(
                ["model", "batch", "method", "peak RSS", "import baseline",
                 "data loading alone", "training-phase peak", "run's own VmHWM",
                 "wait4 ru_maxrss", "process tree (sampled)", "wall s", "runs"],
                detail), "")
            if self.plt is not None:
                self.plot_memory(name, setting, points, labels)
        goals = self.memory_goals(results)
        if goals:
            self.add("Goals checked:", "", *goals, "")

    def plot_memory(self, name, setting, points, labels) -> None:
        plt = self.plt
        tag = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(str(v) for v in setting if v is not None)).strip("-")
        for axis, title, fname in (("depth", "Peak memory vs depth", "memory_vs_depth"),
                                   ("batch", "Peak memory vs batch size", "memory_vs_batch")):
            series: dict[tuple, list] = {}
            for (model, batch), methods in points.items():
                for l, g in methods.items():
                    x, other = ((model_depth(model), f"batch {batch}") if axis == "depth"
                                else (batch, model))
                    if x is None:
                        continue
                    series.setdefault((l, other), []).append((x, g.stat("peak_rss_bytes")["median"] / 1e6))
            series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            for (l, other), pts in sorted(series.items(), key=lambda kv: (method_order(kv[0][0]), kv[0][1])):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{l}, {other}")
            bases = [g.stat("baseline_rss_bytes") for m in points.values() for g in m.values()]
            bases = [b["median"] for b in bases if b]
            if bases:
                ax.axhline(statistics.median(bases) / 1e6, color="gray", linestyle="--",
                           linewidth=1, label="import baseline (torch + edge-trgl)")
            ax.set_xlabel("ResNet depth" if axis == "depth" else "batch size")
            ax.set_ylabel("peak RSS (MB)")
            ax.set_title(f"{title}\n{setting_text(_MEM_KEYS, setting)}", fontsize=9)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            rel = self.save_plot(fig, f"{name}-{tag}-{fname}.png")
            self.add(f"![{title.lower()}]({rel})", "")

    # throughput ----------------------------------------------------------------------------
    def throughput_section(self, name: str, results: list[dict]) -> None:
        self.add(f"### Throughput ({name})", "",
                 "A network epoch is every module seeing the train set once (block-wise: each "
                 "block for one epoch). *Training loops* count only the optimisation steps. *Whole "
                 "run* divides by the run's full time, which includes loading the data, writing the "
                 "feature cache after every module, validation after every epoch, checkpoints and the "
                 "final test pass. *Between modules* is the time from one module's last epoch to the "
                 "next module's first (feature-cache writing, saving and loading modules, one "
                 "validation pass). *CPU s* is the whole command's CPU time (user + system, every "
                 "process it waited for), the work a run did: on a shared machine other jobs' load "
                 "stretches wall time but hardly CPU time. *First epochs left out* is the loops' "
                 "time with each module's first epoch left out (the time of the warm steps: "
                 "`--compile` compiles in a module's first epoch).", "")
        groups = [g for g in group_results(results) if g.runs]
        settings: dict[tuple, list[Group]] = {}
        for g in groups:
            settings.setdefault(setting_of(g, _TPUT_KEYS), []).append(g)
        for setting, gs in settings.items():
            gs.sort(key=lambda g: method_order(g.label))
            rows = []
            for g in gs:
                e2e = _end_to_end_of(g, gs)
                per_epoch = g.stat("run_s_per_network_epoch")
                ref = e2e.stat("run_s_per_network_epoch") if e2e else None
                cpu = g.stat("cpu_s_per_network_epoch")
                cpu_ref = e2e.stat("cpu_s_per_network_epoch") if e2e else None
                loads = [x for r in g.runs for x in (r.get("loadavg_start") or [None])[:1] if x is not None]
                steady = summary_stats(steady_loop_s(r) for r in g.runs)
                rows.append([g.label,
                             fmt_stat(g.stat("train_samples_per_s"), lambda v: f"{v:.0f}"),
                             fmt_stat(g.stat("overall_samples_per_s"), lambda v: f"{v:.0f}"),
                             fmt_stat(g.stat("train_loop_s_per_network_epoch"), lambda v: f"{v:.1f}"),
                             fmt_stat(steady, lambda v: f"{v:.1f}"),
                             fmt_stat(per_epoch, lambda v: f"{v:.1f}"),
                             f"{per_epoch['median'] / ref['median']:.2f}" if (per_epoch and ref) else "-",
                             fmt_stat(cpu, lambda v: f"{v:.1f}"),
                             f"{cpu['median'] / cpu_ref['median']:.2f}" if (cpu and cpu_ref) else "-",
                             fmt_stat(g.stat("between_modules_s"), lambda v: f"{v:.1f}"),
                             fmt_stat(g.stat("network_epochs"), lambda v: f"{v:.0f}", spread=False),
                             f"{min(loads):.1f}–{max(loads):.1f}" if loads else "-",
                             str(len(g.runs))])
            self.add(f"Setting: {setting_text(_TPUT_KEYS, setting)}.", "", *md_table(
                ["method", "samples/s (training loops)", "samples/s (whole run)",
                 "s per network epoch (loops)", "s per network epoch (loops, first epochs left out)",
                 "s per network epoch (whole run)",
                 "whole-run time / end-to-end", "CPU s per network epoch",
                 "CPU time / end-to-end", "between modules s", "network epochs",
                 "load avg at start", "runs"], rows), "")

    # everything ------------------------------------------------------------------------------
    def all_runs(self, name: str, suite: dict) -> None:
        results = suite["results"]
        extra_keys = sorted({f"{kind}:{k}" for r in results for kind in ("cuda", "backend_figures")
                             for k in numeric_leaves(r["measurements"].get(kind) or {})})
        rows = []
        for r in sorted(results, key=lambda r: r["row_id"]):
            m = r["measurements"]
            extra = []
            for key in extra_keys:
                kind, k = key.split(":", 1)
                v = numeric_leaves(m.get(kind) or {}).get(k)
                extra.append("-" if v is None else (fmt_mb(v) if k.endswith("bytes") else f"{v:g}"))
            rows.append([r["row_id"], method_label(r), r["status"], fmt_mb(m.get("peak_rss_bytes")),
                         fmt_mb(m.get("peak_above_baseline_bytes")), fmt_mb(m.get("tree_rss_peak_bytes")),
                         f"{m['wall_s']:.0f}", "-" if m.get("train_samples_per_s") is None
                         else f"{m['train_samples_per_s']:.0f}",
                         fmt_pct(m.get("final_test_acc")), fmt_pct(m.get("best_test_acc")),
                         "/".join(f"{x:.1f}" for x in (r.get("loadavg_start") or [])[:1] + (r.get("loadavg_end") or [])[:1]),
                         *extra])
        header = ["row", "method", "status", "peak RSS MB", "above baseline MB",
                  "process tree MB", "wall s",
                  "samples/s", "last-module test %", "best-val module test %", "load start/end",
                  *[k.split(":", 1)[1] + (" MB" if k.endswith("bytes") else "") for k in extra_keys]]
        self.add(f"### All runs ({name})", "", *md_table(header, rows), "")
        example = results[0]
        self.add("Example command (each row's JSON has its exact command):", "",
                 f"`{example['command_line']}`", "")
        checks = suite["checks"]
        if checks:
            crow = [[c["row_id"], fmt_mb(c["stored_peak_rss_bytes"]), fmt_mb(c["rerun_peak_rss_bytes"]),
                     f"{100 * c['relative_difference']:+.1f}%",
                     "yes" if c["within_tolerance"] else "NO", c.get("checked_at", "")] for c in checks]
            self.add("Reproducibility checks (`edge-trgl bench rerun`: the stored row re-run in a "
                     "fresh process):", "", *md_table(
                         ["row", "stored peak MB", "re-run peak MB", "difference",
                          f"within {100 * checks[0]['tolerance']:.0f}%", "checked"], crow), "")

    def render(self) -> str:
        self.header()
        self.headline()
        self.timings()
        for name in _suite_order(self.suites):
            suite = self.suites[name]
            meta = suite["meta"]
            self.add(f"## Suite `{name}`", "")
            if meta.get("description"):
                self.add(meta["description"].strip(), "")
            if meta.get("notes"):
                self.add(meta["notes"].strip(), "")
            sections = self._sections(name)
            if "accuracy" in sections:
                self.accuracy_section(name, suite["results"])
            if "memory" in sections:
                self.memory_section(name, suite["results"])
            if "throughput" in sections:
                self.throughput_section(name, suite["results"])
            if "time_to_accuracy" in sections:
                from .tta import tta_section
                tta_section(self, name, suite["results"])
            if "small_data" in sections:
                from .small_data import small_data_section
                small_data_section(self, name, suite["results"])
            self.all_runs(name, suite)
        if self.plot_note:
            self.add(f"_{self.plot_note}_", "")
        if self.headline_goals:
            # small-data accuracy first: the accuracy suite's table below it is a short-run one
            at = self.headline_goals_at
            self.lines[at:at] = ["Accuracy with little data at each setting's main length "
                                 "(suite `small-data`: the length its convergence rule gives; "
                                 "test accuracy of the module chosen on validation, medians "
                                 "over seeds):", "", *self.headline_goals, ""]
        return "\n".join(self.lines).rstrip() + "\n"


def render_report(results_dir: str | os.PathLike = "benchmarks/results", *, plots: bool = True,
                  out: str | os.PathLike | None = None) -> Path:
    """Rebuild REPORT.md (and plots/) from the result JSONs; return the report's path."""
    root = Path(results_dir)
    suites = load_results(root)
    report = _Report(suites, root, plots)
    text = report.render()
    path = Path(out) if out else root / "REPORT.md"
    atomic_write_bytes(path, text.encode())
    return path
