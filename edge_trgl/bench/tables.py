"""Results grouped into configurations (seeds and repeats of a row id together), the name of
the method a run used, median (min-max) statistics and the Markdown table formatting the report
is made of."""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

from ..config import TrainConfig


def run_config(result: dict) -> dict:
    cfg = dict(TrainConfig().to_json())
    cfg.update(result.get("options") or {})
    cfg.update(result.get("config") or {})
    return cfg


def model_depth(model: str) -> int | None:
    m = re.search(r"(\d+)$", model or "")
    return int(m.group(1)) if m else None


def method_label(result: dict) -> str:
    """A name for what was trained, from what the run actually did (its plan's splits)."""
    cfg = run_config(result)
    scheme = cfg.get("scheme")
    if scheme == "e2e":
        segments = cfg.get("checkpoint_segments")
        return ("end-to-end" + (" + energy" if cfg.get("e2e_energy") else "")
                + ("" if segments is None else ", checkpointed" + (f" ({segments})" if segments else ""))
                + (", compiled" if cfg.get("compile") else ""))
    splits = (result.get("plan") or {}).get("splits") or []
    tau = cfg.get("tau")
    greedy = tau is None or (isinstance(tau, float) and math.isinf(tau))
    name = "greedy" if greedy else "TRGL"
    if splits and all(hi - lo == 1 for lo, hi in splits):
        name += " block-wise"
    elif splits:
        name += f" K={len(splits)}"
    if scheme != "sequential":
        name += f" {scheme}"
    if not greedy and (cfg.get("tau_mode") != "varying" or tau != 1.0):
        name += f" (tau {tau:g} {cfg.get('tau_mode')})" if cfg.get("tau_mode") != "adaptive" else " (adaptive tau)"
    if cfg.get("aug_policy") == "training" and cfg.get("augment", True) and len(splits) > 1:
        name += ", views from training"
    if cfg.get("head", "conv") != "conv":
        name += f", {cfg['head']} head"
    if cfg.get("compile"):
        name += ", compiled"
    return name


def method_order(label: str) -> tuple:
    e2e = label.startswith("end-to-end")
    block = "block-wise" in label
    k = re.search(r"K=(\d+)", label)
    return (not e2e, block, int(k.group(1)) if k else 0, label.startswith("greedy"), label)


def summary_stats(values) -> dict | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt_mb(b) -> str:
    return "-" if b is None else f"{b / 1e6:.0f}"


def fmt_pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def fmt_stat(st: dict | None, fmt, spread: bool = True) -> str:
    if st is None:
        return "-"
    if st["n"] == 1 or not spread:
        return fmt(st["median"])
    return f"{fmt(st['median'])} ({fmt(st['min'])}–{fmt(st['max'])})"


def numeric_leaves(d: dict, prefix: str = "", depth: int = 0) -> dict:
    """{"ort.preparation.peak_rss_bytes": 1, ...}: the numbers of a (nested) figures dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and depth < 2:
            out.update(numeric_leaves(v, f"{prefix}{k}.", depth + 1))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def runs_stat(runs: list[dict], key: str) -> dict | None:
    """summary_stats of one measurement over runs (seeds, repeats)."""
    return summary_stats(r["measurements"].get(key) for r in runs)


def runs_module_stats(runs: list[dict], key: str = "test_acc_by_module") -> list[dict | None]:
    """summary_stats of a per-module measurement, module by module, over runs."""
    lists = [r["measurements"].get(key) or [] for r in runs]
    width = max((len(x) for x in lists), default=0)
    return [summary_stats(x[i] if i < len(x) else None for x in lists) for i in range(width)]


@dataclass
class Group:
    suite: str
    group: str
    label: str
    runs: list[dict]
    failed: list[dict]

    @property
    def cfg(self) -> dict:
        return run_config((self.runs or self.failed)[0])

    def stat(self, key: str) -> dict | None:
        return runs_stat(self.runs, key)

    def module_stats(self, key: str = "test_acc_by_module") -> list[dict | None]:
        return runs_module_stats(self.runs, key)

    @property
    def num_modules(self) -> int:
        plans = [(r.get("plan") or {}).get("splits") for r in self.runs]
        return max((len(p) for p in plans if p), default=0)


def group_results(results: list[dict]) -> list[Group]:
    by: dict[str, Group] = {}
    for r in results:
        g = by.setdefault(r["group"], Group(r["suite"], r["group"], method_label(r), [], []))
        (g.runs if r.get("status") == "ok" else g.failed).append(r)
        if r.get("status") == "ok":
            g.label = method_label(r)
    return list(by.values())


def setting_of(g: Group, keys: tuple) -> tuple:
    cfg = g.cfg
    return tuple(cfg.get(k) for k in keys)


def setting_text(keys: tuple, values: tuple) -> str:
    parts = []
    for k, v in zip(keys, values):
        if k == "data_dir" or v is None:
            continue
        parts.append(f"{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"{k.replace('_', '-')} {v}")
    return ", ".join(parts)
