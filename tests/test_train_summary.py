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
