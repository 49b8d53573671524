"""One registry of what a sweep's names are called (flip.sweep.names): every column, axis and metric has
one entry, and the tables, the plots, a spec's row words, the results and the spec checks all read it."""

from flip.sweep import names, plots, results, spec, stats, tables

EVERY_KIND = ("column", "result", "config", "series", "metric", "eval_s")


def test_every_name_a_spec_may_use_has_one_entry_under_its_own_key():
    for name in names._candidates(EVERY_KIND):
        assert names.lookup(name).key == name


def test_a_table_and_a_plot_name_a_column_in_the_same_words():
    for name in names._candidates(EVERY_KIND):
        entry = names.lookup(name)
        assert tables.label(name).startswith(entry.short or entry.label), name
        assert plots.label_for(name).startswith(entry.label), name
    # a shorter table header only where a committed table and a committed plot already differ
    assert {key for key, c in names.COLUMNS.items() if c.short} == {"batch_size"}
    assert (tables.label("batch_size"), plots.label_for("batch_size")) == ("batch", "batch size")
    assert tables.label("steps") == plots.label_for("steps") == "steps"


def test_row_words_and_plot_legends_say_a_ratio_the_same_way():
    assert spec._words({"mask_ratio": 0.5, "samples": 30000}) == "mask 50%, 30000 samples"
    assert spec._label({"mask_ratio": 0.5, "samples": 30000}) == "mask_ratio=50%, samples=30000"
    assert plots._series_label("mask_ratio", 0.5) == "mask 50%"
    assert plots._series_label("text_mask_ratio", 0.25) == spec._words({"text_mask_ratio": 0.25}) == "text mask 25%"
    assert plots._series_label("variant", "tuned") == "+ unmasked tuning"


def test_results_and_stats_take_the_metrics_from_the_registry():
    assert list(results.METRICS) == list(names.METRICS) == list(stats.METRIC_COLUMNS)
    assert results.METRICS["retrieval_i2t"] == ("retrieval", "image_to_text_R@1")


def test_time_figures_are_the_registrys_timed_names():
    timed = {name for name in names._candidates(EVERY_KIND) if tables.is_time(name)}
    assert timed == {"time_min", "time_rel", "tuning_cost_rel", "train_time_s", "eval_s@full", "eval_s@masked"}
