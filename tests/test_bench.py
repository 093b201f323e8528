"""The benchmark harness: matrix expansion, a tiny real suite in child processes, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edge_trgl import bench
from edge_trgl.bench import runner
from edge_trgl.cli.main import main
from edge_trgl.errors import UserError

from helpers import TINY_MATRIX_DEFAULTS, CollectingReport

TINY = """
name = "tiny"
description = "two tiny rows"
sections = ["accuracy", "memory", "throughput"]
timeout_s = 120

""" + TINY_MATRIX_DEFAULTS + """epochs = 1

[methods.e2e]
scheme = "e2e"

[methods.block]
scheme = "sequential"
module-size = 1
tau = 1.0

[[rows]]
id = "{model}-{method}"
method = ["e2e", "block"]
"""


def write(tmp_path: Path, text: str, name: str = "m.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- matrices -----------------------------------------------------------------------------------

def test_matrix_expands_methods_lists_and_seeds(tmp_path):
    text = TINY.replace('method = ["e2e", "block"]',
                        'method = ["e2e", "block"]\nbatch-size = [16, 32]\nseed = [0, 1]')
    text = text.replace('id = "{model}-{method}"', 'id = "{model}-{method}-b{batch-size}"')
    m = bench.load_matrix(str(write(tmp_path, text)), repeats=2)
    ids = [r.row_id for r in m.rows]
    assert len(ids) == 2 * 2 * 2 * 2 and len(set(ids)) == len(ids)
    assert "resnet8-block-b16-s1-r1" in ids and "resnet8-e2e-b32-s0" in ids
    row = next(r for r in m.rows if r.row_id == "resnet8-block-b16-s1")
    assert row.group == "resnet8-block-b16" and row.method == "block" and row.seed == 1
    # method presets and defaults end up as real `edge-trgl train` arguments
    args = row.train_args
    assert args[args.index("--module-size") + 1] == "1"
    assert args[args.index("--batch-size") + 1] == "16"
    assert args[args.index("--scheme") + 1] == "sequential"


def test_matrix_inf_tau_splits_flags_and_overrides(tmp_path):
    text = TINY.replace('[[rows]]', '''[methods.greedy]
scheme = "sequential"
splits = [2, 3]
tau = inf
augment = false

[[rows]]''').replace('method = ["e2e", "block"]', 'method = "greedy"')
    m = bench.load_matrix(str(write(tmp_path, text)), overrides={"epochs": 2})
    (row,) = m.rows
    a = row.train_args
    assert a[a.index("--tau") + 1] == "inf" and math.isinf(row.options["tau"])
    assert a[a.index("--splits") + 1] == "2,3"
    assert "--no-augment" in a
    assert a[a.index("--epochs") + 1] == "2"


@pytest.mark.parametrize("change, message", [
    (('epochs = 1', 'epoch = 1'), "not an option of `edge-trgl train`"),
    (('epochs = 1', 'epochs = 0'), "epochs"),
    (('epochs = 1', 'out = "/tmp/x"'), "set by the benchmark harness"),
    (('method = ["e2e", "block"]', 'method = ["e2e", "nope"]'), "method 'nope' is not defined"),
    (('id = "{model}-{method}"', 'id = "{model}"'), "expand to the id"),
    (('id = "{model}-{method}"', 'id = "{modle}-{method}"'), "uses {modle}"),
    (('scheme = "e2e"', 'scheme = "sideways"'), "rejected"),
])
def test_matrix_errors_are_user_errors(tmp_path, change, message):
    text = TINY.replace(*change, 1)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("{", r"\{")):
        bench.load_matrix(str(write(tmp_path, text)))


def test_unknown_matrix_name_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match="No benchmark matrix named"):
        bench.resolve_matrix("no-such-suite")
    with pytest.raises(UserError, match="not valid TOML"):
        bench.load_matrix(str(write(tmp_path, "name = [")))


def test_parse_override():
    assert bench.parse_override("epochs=2") == ("epochs", 2)
    assert bench.parse_override("tau=inf")[1] == math.inf
    assert bench.parse_override("lr=0.1") == ("lr", 0.1)
    assert bench.parse_override("augment=false") == ("augment", False)
    with pytest.raises(UserError):
        bench.parse_override("epochs")


# --- throughput arithmetic ----------------------------------------------------------------------

def test_throughput_counts_network_epochs_and_gaps():
    # two modules, 2 epochs each, 100 images; module 1 starts 3 s after module 0's last epoch
    metrics = [
        {"module": 0, "epoch": 1, "seconds": 2.0, "samples_per_s": 50.0, "time": 102.0},
        {"module": 0, "epoch": 2, "seconds": 2.0, "samples_per_s": 50.0, "time": 104.0},
        {"module": 1, "epoch": 1, "seconds": 1.0, "samples_per_s": 100.0, "time": 108.0},
        {"module": 1, "epoch": 2, "seconds": 1.0, "samples_per_s": 100.0, "time": 109.0},
    ]
    t = bench.throughput(metrics, run_s=12.0)
    assert t["train_images"] == 100
    assert t["network_epochs"] == pytest.approx(2.0)
    assert t["train_loop_s"] == pytest.approx(6.0)
    assert t["train_samples_per_s"] == pytest.approx(200 / 6.0)
    assert t["overall_samples_per_s"] == pytest.approx(200 / 12.0)
    assert t["between_modules_s"] == pytest.approx(3.0)
    assert t["run_s_per_network_epoch"] == pytest.approx(6.0)
    # a resumed run stopped at 105 and continued: the pause is not time between modules
    assert bench.throughput(metrics, run_s=12.0, breaks=[105.0])["between_modules_s"] == 0.0
    assert bench.throughput(metrics, run_s=12.0, breaks=[103.0])["between_modules_s"] == \
        pytest.approx(3.0)  # a break inside module 0 leaves the module-to-module gap alone


# --- the report from hand-made results (no child processes) -------------------------------------

def fake_result(suite, model, batch, scheme, peak_mb, *, module_size=None, seed=0, acc=0.5,
                tau=1.0, modules=4):
    depth = int(model[len("resnet"):])
    blocks = 1 + 3 * (depth - 2) // 6
    if module_size == 1:
        splits = [[i, i + 1] for i in range(blocks)]
    else:
        step = -(-blocks // modules)
        splits = [[lo, min(lo + step, blocks)] for lo in range(0, blocks, step)]
    method = "e2e" if scheme == "e2e" else ("block" if module_size == 1 else f"k{len(splits)}")
    group = f"{model}-{method}-b{batch}"
    accs = [acc] * len(splits) if scheme != "e2e" else [None] * (len(splits) - 1) + [acc]
    return {
        "format": bench.RESULT_FORMAT, "suite": suite, "group": group,
        "row_id": f"{group}-s{seed}", "method": method, "seed": seed, "repeat": 0,
        "status": "ok", "returncode": 0, "command_line": "python -m edge_trgl.cli.main train ...",
        "options": {"model": model, "batch_size": batch, "scheme": scheme, "tau": tau,
                    "module_size": module_size, "data": "cifar10", "aug_policy": "views"},
        "config": None, "plan": {"splits": splits},
        "loadavg_start": [1.0, 1.0, 1.0], "loadavg_end": [1.5, 1.0, 1.0],
        "host": {"cpu_model": "Test CPU", "cpu_count": 2, "packages": {"torch": "x"}},
        "measurements": {"peak_rss_bytes": int(peak_mb * 1e6), "wall_s": 10.0,
                         "baseline_rss_bytes": int(200e6),
                         "peak_above_baseline_bytes": int((peak_mb - 200) * 1e6),
                         "final_test_acc": acc, "best_test_acc": acc, "best_module": 0,
                         "test_acc_by_module": accs, "torch_threads": 2,
                         "cuda": {"cuda_peak_allocated_bytes": int(5e6)} if scheme == "e2e" else {},
                         "backend_figures": {"ort": {"orchestrator_peak_rss_bytes": int(9e7),
                                                     "workers": [{"k": 0}]}}
                         if module_size == 1 else {}},
    }


def write_results(root: Path, results: list[dict]) -> None:
    for r in results:
        path = root / r["suite"] / f"{r['row_id']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    for suite, sections in (("memory", ["memory"]), ("accuracy", ["accuracy", "throughput"])):
        meta = {"suite": suite, "sections": sections, "invocations": [
            {"command": f"edge-trgl bench run {suite}", "started_at": "t", "seconds": 120.0,
             "rows_run": ["a"], "rows_skipped": [], "rows_failed": [], "complete": True}]}
        if (root / suite).is_dir():
            (root / suite / "_suite.json").write_text(json.dumps(meta))


def test_report_memory_ratios_and_goals(tmp_path):
    results = [
        fake_result("memory", "resnet56", 128, "e2e", 1000),
        fake_result("memory", "resnet56", 128, "sequential", 350, module_size=1),
        fake_result("memory", "resnet20", 128, "sequential", 300, module_size=1),
        fake_result("memory", "resnet110", 128, "sequential", 360, module_size=1),
        fake_result("memory", "resnet56", 32, "e2e", 500),
    ]
    write_results(tmp_path, results)
    text = bench.render_report(tmp_path, plots=False).read_text()
    assert "TRGL block-wise / end-to-end peak RSS at ResNet-56, batch 128" in text
    assert "**0.35**" in text and "goal <= 0.40: met" in text
    # 360 / 300 = 1.20: outside 10%, reported as measured
    assert "ResNet-110 peak / ResNet-20 peak = **1.20**" in text and "within 10%: not met" in text
    # above-baseline ratio: (350-200)/(1000-200)
    assert "0.35 (0.19)" in text
    assert "cuda_peak_allocated_bytes MB" in text  # CUDA figures get their own column
    assert "ort.orchestrator_peak_rss_bytes MB" in text and "| 90 |" in text  # nested backend figures
    assert "Plots were skipped (--no-plots)" in text
    assert "`edge-trgl bench run memory`" in text and "2.0 min" in text


def test_report_accuracy_spread_and_per_module(tmp_path):
    results = [fake_result("accuracy", "resnet20", 64, "e2e", 900, seed=s, acc=a)
               for s, a in enumerate((0.40, 0.44, 0.42))]
    results += [fake_result("accuracy", "resnet20", 64, "sequential", 500, seed=s, acc=a)
                for s, a in enumerate((0.45, 0.47, 0.46))]
    results += [fake_result("accuracy", "resnet20", 64, "sequential", 500, seed=s, acc=a,
                            tau=math.inf) for s, a in enumerate((0.30, 0.31, 0.35))]
    # the greedy rows need their own group
    for r in results[6:]:
        r["group"] = r["group"].replace("-k4-", "-greedyk4-")
        r["row_id"] = r["row_id"].replace("-k4-", "-greedyk4-")
    write_results(tmp_path, results)
    text = bench.render_report(tmp_path, plots=False).read_text()
    assert "| end-to-end | 4 | - | 42.0 (40.0–44.0) |" in text
    assert "| TRGL K=4 | 4 | 1 | 46.0 (45.0–47.0) |" in text
    assert "| greedy K=4 | 4 | inf | 31.0 (30.0–35.0) |" in text
    assert "| end-to-end | - | - | - | 42.0 (40.0–44.0) |" in text  # only its last head
    assert "## Headline" in text and "0.56" in text  # 500 / 900 MB


def test_report_errors(tmp_path, capsys):
    assert main(["bench", "report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["bench", "report", str(tmp_path / "empty")]) == 2
    assert "holds no benchmark results" in capsys.readouterr().err


# --- a real tiny suite, each row a child process ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    matrix = bench.load_matrix(str(write(root, TINY)))
    inv = bench.run_suite(matrix, root / "results", work_dir=str(root / "work"),
                          command="pytest tiny", echo=lambda *_: None, baseline_repeats=1)
    return root, inv


@pytest.mark.slow
def test_tiny_suite_runs_and_records(tiny_suite):
    root, inv = tiny_suite
    assert inv["rows_run"] == ["resnet8-e2e-s0", "resnet8-block-s0"] and not inv["rows_failed"]
    suite_dir = root / "results" / "tiny"
    e2e = json.loads((suite_dir / "resnet8-e2e-s0.json").read_text())
    block = json.loads((suite_dir / "resnet8-block-s0.json").read_text())
    for r in (e2e, block):
        m = r["measurements"]
        assert r["status"] == "ok" and r["command"][-1] == "--quiet"
        assert m["baseline_rss_bytes"] > 50e6  # torch alone is well above that
        assert m["peak_rss_bytes"] > m["baseline_rss_bytes"]
        assert m["wall_s"] > 0 and m["train_samples_per_s"] > 0
        assert r["host"]["cpu_count"] and "torch" in r["host"]["packages"]
        assert len(r["loadavg_start"]) == 3 and len(r["loadavg_end"]) == 3
        assert r["config"]["model"] == "resnet8"
    # the block-wise run scores its chosen and last heads on the test set (--test-modules best);
    # end-to-end trains only the last one
    accs = block["measurements"]["test_acc_by_module"]
    assert len(accs) == 4 and accs[-1] is not None
    assert accs[block["measurements"]["best_module"]] is not None
    assert all(0 <= a <= 1 for a in accs if a is not None)
    assert e2e["measurements"]["test_acc_by_module"][:3] == [None, None, None]
    assert (suite_dir / "_baseline-torch-cpu.json").exists()
    meta = json.loads((suite_dir / "_suite.json").read_text())
    assert meta["invocations"][-1]["complete"] and meta["invocations"][-1]["command"] == "pytest tiny"
    # rows with a result are skipped on the next invocation
    again = bench.run_suite(bench.load_matrix(str(root / "m.toml")), root / "results",
                            echo=lambda *_: None)
    assert again["rows_run"] == [] and len(again["rows_skipped"]) == 2


@pytest.mark.slow
def test_tiny_suite_report_regenerates_from_json(tiny_suite, tmp_path):
    root, _ = tiny_suite
    results = root / "results"
    assert main(["bench", "report", str(results), "--no-plots"]) == 0
    text = (results / "REPORT.md").read_text()
    for needle in ("resnet8-e2e-s0", "resnet8-block-s0", "### Peak memory (tiny)",
                   "### Throughput (tiny)", "TRGL block-wise", "Plots were skipped"):
        assert needle in text
    pytest.importorskip("matplotlib")
    bench.render_report(results, plots=True)
    assert list((results / "plots").glob("tiny-*memory_vs_accuracy.png"))


@pytest.mark.slow
def test_dry_run_lists_only_the_selected_rows_and_which_are_done(tiny_suite, tmp_path, capsys):
    root, _ = tiny_suite
    m = str(root / "m.toml")
    results = str(root / "results")
    assert main(["bench", "run", m, "--results", results, "--only", "*-block-*", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 rows, 1 done before" in out and "resnet8-block-s0 [done]" in out
    assert "resnet8-e2e-s0" not in out
    assert main(["bench", "run", m, "--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 rows, 0 done before" in out and "resnet8-e2e-s0 [to run]" in out
    assert not (tmp_path / "tiny").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_rerun_reproduces_peak(tiny_suite):
    root, _ = tiny_suite
    check = bench.rerun_check(root / "results" / "tiny" / "resnet8-e2e-s0.json",
                              work_dir=str(root / "work"))
    assert check["within_tolerance"], check
    # same seed, same threads, same code: the losses and accuracies repeat bit for bit
    assert check["results_identical"], check["first_result_difference"]
    assert (root / "results" / "tiny" / "_checks" / "resnet8-e2e-s0.json").exists()


def test_result_difference_names_the_first_changed_figure():
    epoch = {"module": 0, "epoch": 1, "train_loss": 2.5, "val_acc": 0.25, "seconds": 3.0,
             "samples_per_s": 100.0, "time": 1.0, "rss_bytes": 10}
    stored = {"metrics": [epoch], "summary": {"modules": [{"module": 0, "blocks": [0, 2],
                                                            "val_acc": 0.25, "test_acc": 0.5}]}}
    slower = {"metrics": [{**epoch, "seconds": 9.0, "samples_per_s": 30.0, "time": 5.0,
                           "rss_bytes": 99}], "summary": stored["summary"]}
    assert runner.first_result_difference(stored, slower) is None  # timing is not a result
    changed = {**slower, "metrics": [{**epoch, "train_loss": 2.5000001}]}
    assert "train_loss" in runner.first_result_difference(stored, changed)
    other_test = {"metrics": [epoch], "summary": {"modules": [{"module": 0, "blocks": [0, 2],
                                                                "val_acc": 0.25, "test_acc": 0.375}]}}
    assert "test_acc" in runner.first_result_difference(stored, other_test)
    assert "epoch records" in runner.first_result_difference(stored, {"metrics": [], "summary": {}})


def test_a_rerun_keeps_the_recipe_of_a_row_recorded_before_an_option_existed():
    """A row whose config.json predates --lr-schedule ran at a constant rate: its re-run says so
    explicitly, whatever today's default is; a row that recorded the option is left alone."""
    old = {"lr": 0.05, "epochs": 3}
    # (and, from before --test-modules, every module's head scored on the test set)
    assert runner.legacy_args(old) == ["--lr-schedule", "constant", "--warmup-epochs", "0.0",
                                       "--test-modules", "all"]
    assert runner.legacy_args({**old, "lr_schedule": "cosine", "warmup_epochs": None,
                               "checkpoint_segments": None, "test_modules": "best"}) == []


def test_time_to_accuracy_section_tables_each_method_by_epochs(tmp_path):
    from edge_trgl.bench.tta import tta_section

    def result(method, epochs, acc, wall, status="ok"):
        return {"status": status, "method": method, "row_id": f"tta-resnet20-{method}-e{epochs}",
                "config": {"model": "resnet20", "epochs": epochs, "scheme": "sequential"},
                "measurements": {"wall_s": wall, "best_test_acc": acc, "tree_rss_peak_bytes": 9e8,
                                 **({"cpu_s": wall / 3} if method == "trgl" else {})},
                "summary": {"whole_command_peak_bytes": 4.5e8},
                "plan": {"batch_size": 64, "splits": [[0, 5], [5, 10]]}}
    out = CollectingReport()
    tta_section(out, "tta", [result("e2e", 2, 0.3, 100.0), result("trgl", 4, 0.5, 300.0),
                             result("trgl", 2, 0.4, 150.0), result("e2e", 4, None, 0, "error")])
    text = "\n".join(out.lines)
    rows = [line for line in out.lines if line.startswith("| TRGL") or line.startswith("| end-to")]
    assert rows[0].startswith("| TRGL module-wise | 2 |") and rows[1].startswith("| TRGL module-wise | 4 |")
    assert "| 150 | 50 | 450 | 40.0 |" in rows[0] and rows[2].startswith("| end-to-end | 2 |")
    assert "| 100 | - | 450 | 30.0 |" in rows[2]      # a row from before CPU time was recorded
    assert "tta-resnet20-e2e-e4 (error)" in text


def test_labels_tell_the_view_policies_apart():
    from edge_trgl.bench.tables import method_label
    views = fake_result("s", "resnet20", 64, "sequential", 400)
    training = fake_result("s", "resnet20", 64, "sequential", 400)
    training["options"]["aug_policy"] = "training"
    e2e = fake_result("s", "resnet20", 64, "e2e", 400)
    e2e["options"]["aug_policy"] = "training"   # no later modules: nothing to say
    assert method_label(views) == "TRGL K=4"
    assert method_label(training) == "TRGL K=4, views from training"
    assert method_label(e2e) == "end-to-end"


def test_labels_name_a_head_other_than_the_default():
    from edge_trgl.bench.tables import method_label
    conv = fake_result("s", "resnet20", 64, "sequential", 400)
    pooled = fake_result("s", "resnet20", 64, "sequential", 400)
    pooled["options"]["head"] = "pooled-conv"
    assert method_label(conv) == "TRGL K=4"
    assert method_label(pooled) == "TRGL K=4, pooled-conv head"


def test_throughput_measures_compiled_rows_against_compiled_end_to_end(tmp_path):
    """--compile rows are labelled so and measured against the compiled end-to-end row, the eager
    rows against the eager one."""
    results = []
    for scheme, compile_, per_epoch in (("e2e", False, 10.0), ("e2e", True, 8.0),
                                        ("sequential", False, 11.0), ("sequential", True, 8.4)):
        r = fake_result("accuracy", "resnet20", 64, scheme, 500)
        if compile_:
            r["options"]["compile"] = True
            r["group"] += "-compile"
            r["row_id"] = r["group"] + "-s0"
        r["measurements"]["run_s_per_network_epoch"] = per_epoch
        results.append(r)
    write_results(tmp_path, results)
    text = bench.render_report(tmp_path, plots=False).read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[7].strip()
            for line in text.split("### Throughput")[1].split("###")[0].splitlines()
            if line.startswith("| ") and "method" not in line}
    assert rows == {"end-to-end": "1.00", "end-to-end, compiled": "1.00",
                    "TRGL K=4": "1.10", "TRGL K=4, compiled": "1.05"}


def test_steady_loop_time_leaves_out_each_modules_first_epoch():
    from edge_trgl.bench.report import steady_loop_s
    log = [{"module": 0, "epoch": 1, "seconds": 60.0}, {"module": 0, "epoch": 2, "seconds": 10.0},
           {"module": 0, "epoch": 3, "seconds": 12.0}, {"module": 1, "epoch": 1, "seconds": 30.0},
           {"module": 1, "epoch": 2, "seconds": 5.0}]
    assert steady_loop_s({"metrics": log}) == pytest.approx(11.0 + 5.0)
    assert steady_loop_s({"metrics": log[:4]}) is None  # module 1 has one epoch only
    assert steady_loop_s({}) is None
    laps = [{"lap": lap, "module": 0, "epoch": e, "seconds": s}
            for lap in (0, 1) for e, s in ((1, 9.0), (2, 4.0))]
    assert steady_loop_s({"metrics": laps}) == pytest.approx(4.0)  # per network epoch


def test_memory_goals_judge_the_method_not_a_compiled_run(tmp_path):
    compiled = fake_result("memory", "resnet56", 128, "sequential", 600, module_size=1)
    compiled["options"]["compile"] = True
    compiled["group"] += "-compile"
    compiled["row_id"] = compiled["group"] + "-s0"
    write_results(tmp_path, [fake_result("memory", "resnet56", 128, "e2e", 1000),
                             fake_result("memory", "resnet56", 128, "sequential", 350, module_size=1),
                             compiled])
    text = bench.render_report(tmp_path, plots=False).read_text()
    assert "TRGL block-wise / end-to-end peak RSS at ResNet-56, batch 128" in text
    assert "TRGL block-wise, compiled" in text  # listed in the tables
    assert "compiled / end-to-end peak RSS" not in text  # but not judged


def test_invocations_written_at_the_same_moment_are_all_kept(tmp_path, monkeypatch):
    """Two runners of one suite finishing together once lost an invocation record: each read
    _suite.json, then each wrote its own list. The read is slowed here so that, unlocked, every
    writer would read before any wrote."""
    import threading
    import time as time_mod

    matrix = bench.load_matrix(str(write(tmp_path, TINY)))
    slow_read = runner.read_json

    def read_then_wait(path):
        data = slow_read(path)
        time_mod.sleep(0.05)
        return data

    monkeypatch.setattr(runner, "read_json", read_then_wait)
    threads = [threading.Thread(target=runner._write_invocation,
                                args=(tmp_path, matrix, {"started_at": f"t{i}"}, 0.0))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = json.loads((tmp_path / "_suite.json").read_text())["invocations"]
    assert sorted(r["started_at"] for r in kept) == [f"t{i}" for i in range(6)]


@pytest.mark.parametrize("ran_from_a_repository", [True, False])
def test_the_report_describes_a_suite_as_this_checkouts_matrix_does(tmp_path, ran_from_a_repository):
    """A row run from an older clone of the repository writes that clone's notes into
    _suite.json when it finishes; the report takes them from this checkout's matrix of the same
    name instead. A matrix the user gave by another path keeps what _suite.json recorded."""
    from edge_trgl.bench.matrix import load_toml, matrices_dir
    from edge_trgl.bench.results import load_results
    write_results(tmp_path, [fake_result("quick", "resnet8", 32, "e2e", 300)])
    stored_path = (tmp_path / "old-clone" / "benchmarks" / "matrices" / "quick.toml"
                   if ran_from_a_repository else tmp_path / "mine" / "quick.toml")
    (tmp_path / "quick" / "_suite.json").write_text(json.dumps(
        {"suite": "quick", "matrix": str(stored_path), "description": "stale description",
         "notes": "stale notes", "sections": ["memory"], "invocations": []}))
    meta = load_results(tmp_path)["quick"]["meta"]
    current = load_toml(matrices_dir() / "quick.toml")
    if ran_from_a_repository:
        assert meta["notes"] == current["notes"] != "stale notes"
        assert meta["description"] == current["description"]
        assert meta["sections"] == current["sections"]
    else:
        assert (meta["notes"], meta["description"], meta["sections"]) == (
            "stale notes", "stale description", ["memory"])
