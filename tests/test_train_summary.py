"""summary.format_summary: the table a user reads at the end of a run."""

from edge_trgl.summary import format_summary


def summary(**row_extra):
    rows = [{"module": k, "blocks": [2 * k, 2 * k + 2], "val_acc": 0.3 + k / 100,
             "test_acc": 0.31 + k / 100, **row_extra} for k in range(2)]
    return {"modules": rows, "best_module": 1, "seconds": 12.5, "peak_rss_bytes": 420_000_000,
            "budget_bytes": 512_000_000, "estimated_peak_bytes": 430_000_000, "run_dir": "/r"}


def test_module_peaks_and_estimates_are_columns_when_the_run_has_them():
    text = format_summary(summary(measured_peak_bytes=401_000_000, estimated_peak_bytes=410_000_000))
    header, first, second = text.splitlines()[:3]
    assert "peak" in header and "estimate" in header
    assert "401 MB" in first and "410 MB" in first and second.endswith("<- best")
    assert "peak RSS: 420 MB (budget 512 MB, estimate 430 MB)" in text


def test_without_per_module_figures_the_table_has_no_empty_columns():
    text = format_summary(summary())
    assert "estimate" not in text.splitlines()[0] and "peak" not in text.splitlines()[0]


def test_blocks_are_shown_first_last_inclusive_everywhere_json_keeps_half_open():
    """summary.json / plan.json keep [first, end) lists; every table and message shows one form,
    first-last with both included, from summary.block_range."""
    from edge_trgl.memory.budgeted import checkpoint_note
    from edge_trgl.memory.planner import format_plan
    from edge_trgl.summary import block_range, blocks_cell
    assert block_range(0, 2) == "0-1" and block_range(3, 4) == "3-3"
    assert blocks_cell(0, 2) == "   0-1   " and blocks_cell(10, 20) == "  10-19  "
    table = format_summary(summary())
    plan = format_plan({"splits": [[0, 2], [2, 4]], "batch_size": 8, "views": 0,
                        "cache_dtype": "fp16"})
    for k, (lo, hi) in enumerate([[0, 2], [2, 4]]):       # summary()'s rows: blocks [2k, 2k + 2]
        row = table.splitlines()[1 + k].split()
        assert row[:2] == [str(k), block_range(lo, hi)]
        assert f"module {k}: blocks {block_range(lo, hi)}" in plan
    assert "(blocks 0-1, 2-3, 4-5;" in checkpoint_note(6, 3)
