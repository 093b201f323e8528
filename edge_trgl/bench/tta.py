"""The time-to-accuracy section of the report: test accuracy against wall-clock time and against
peak memory, one line per way of training, every run inside the same memory budget (suite
`tta`). The figure a user chooses by: which method reaches an accuracy first, within the budget."""

from __future__ import annotations

import re

from .tables import fmt_mb, fmt_pct, md_table, run_config

ORDER = ("trgl", "greedy", "e2e-ckpt", "e2e")
NAMES = {"trgl": "TRGL module-wise", "greedy": "greedy module-wise",
         "e2e-ckpt": "end-to-end, checkpointed", "e2e": "end-to-end"}


def point(r: dict) -> dict:
    """One run as a point: its wall time, the whole command's peak memory (every process of it),
    the test accuracy of the module chosen on validation, and what the planner chose."""
    summary = r.get("summary") or {}
    m = r["measurements"]
    plan = r.get("plan") or {}
    return {"method": r.get("method") or run_config(r).get("scheme"),
            "model": run_config(r).get("model"), "epochs": run_config(r).get("epochs"),
            "wall_s": m.get("wall_s"), "cpu_s": m.get("cpu_s"), "test_acc": m.get("best_test_acc"),
            "peak_bytes": summary.get("whole_command_peak_bytes") or m.get("tree_rss_peak_bytes"),
            "batch_size": plan.get("batch_size"),
            # an end-to-end run is one module, whatever heads its plan lists
            "modules": 1 if run_config(r).get("scheme") == "e2e" else len(plan.get("splits") or [])}


def tta_section(report, name: str, results: list[dict]) -> None:
    ok = [point(r) for r in results if r.get("status") == "ok"]
    refused = [r for r in results if r.get("status") != "ok"]
    report.add(f"### Time to accuracy ({name})", "",
               "Test accuracy of the module chosen on validation, against the whole command's wall "
               "time (planning included) and its peak memory (every process together, as its memory "
               "cgroup counted it). *CPU s* is its CPU time (every process it waited for; recorded "
               "by later rows): on a shared machine other jobs stretch wall time, hardly CPU time. "
               "A method missing at a depth did not fit the budget at any batch size, or its rows "
               "have not run yet.", "")
    for model in sorted({p["model"] for p in ok}, key=lambda m: int(re.sub(r"\D", "", m) or 0)):
        pts = sorted((p for p in ok if p["model"] == model),
                     key=lambda p: (ORDER.index(p["method"]) if p["method"] in ORDER else 9,
                                    p["epochs"] or 0))
        rows = [[NAMES.get(p["method"], p["method"]), str(p["epochs"]), str(p["batch_size"]),
                 str(p["modules"]), f"{p['wall_s']:.0f}",
                 "-" if p["cpu_s"] is None else f"{p['cpu_s']:.0f}", fmt_mb(p["peak_bytes"]),
                 fmt_pct(p["test_acc"])] for p in pts]
        report.add(f"{model}:", "", *md_table(
            ["method", "epochs", "batch", "modules", "wall s", "CPU s", "peak MB (whole command)",
             "test %"], rows), "")
        if report.plt is not None:
            plot(report, name, model, pts)
    if refused:
        report.add("Rows that did not run to the end: "
                   + ", ".join(f"{r['row_id']} ({r.get('status')})" for r in refused) + ".", "")


def plot(report, name: str, model: str, pts: list[dict]) -> None:
    plt = report.plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in [m for m in ORDER if any(p["method"] == m for p in pts)]:
        mine = [p for p in pts if p["method"] == method and p["test_acc"] is not None]
        label = NAMES[method]
        axes[0].plot([p["wall_s"] for p in mine], [100 * p["test_acc"] for p in mine],
                     marker="o", label=label)
        axes[1].scatter([p["peak_bytes"] / 1e6 for p in mine], [100 * p["test_acc"] for p in mine],
                        label=label)
    axes[0].set_xlabel("wall-clock time of the whole command (s)")
    axes[1].set_xlabel("peak memory of the whole command (MB)")
    for ax in axes:
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Time to accuracy under one memory budget: {model} ({name})", fontsize=10)
    rel = report.save_plot(fig, f"{name}-{model}-time_to_accuracy.png")
    report.add(f"![time to accuracy, {model}]({rel})", "")
