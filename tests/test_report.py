"""The report's arithmetic on hand-made results: which pairs count, medians, intervals."""

import json
import math
import statistics

import pytest

from w2s_lightning import figures, report, tables
from w2s_lightning.errors import ConfigError
from w2s_lightning.results import Results

PARAMS = {"small": 1e6, "mid": 2e6, "big": 3e6}


def result(weak, strong, accs, seed=0, loss="xent", task="sst2", n_test=10_000, **settings):
    """A results.json as the pipeline writes it; ``settings`` go into its config (``train__epochs=3``
    becomes train.epochs)."""
    weak_acc, transfer_acc, ceiling_acc = accs
    config = {
        "weak": {"params": PARAMS[weak], "name": weak},
        "strong": {"params": PARAMS[strong], "name": strong},
        "seed": seed,
        "loss": {"name": loss},
        "paths": {"output_dir": f"out/{weak}-{strong}-{loss}-{seed}"},
    }
    for key, value in settings.items():
        *parents, leaf = key.split("__")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return {
        "task": task,
        "loss": loss,
        "seed": seed,
        "weak_model": weak,
        "strong_model": strong,
        "n_test": n_test,
        "stages": {
            "weak": {"acc": weak_acc, "auroc": weak_acc, "key": f"gt-{task}-{weak}-{seed}", "reused": False},
            "transfer": {
                "acc": transfer_acc,
                "auroc": transfer_acc,
                "key": f"transfer-{weak}-{strong}-{loss}-{seed}",
                "reused": False,
            },
            "ceiling": {"acc": ceiling_acc, "auroc": ceiling_acc, "key": f"gt-{task}-{strong}-{seed}", "reused": True},
        },
        "config": config,
    }


def test_summary_is_the_median_over_valid_pairs_and_counts_the_left_out():
    results = [
        result("small", "mid", (0.6, 0.7, 0.8)),  # PGR 0.5
        result("small", "big", (0.6, 0.9, 0.9)),  # PGR 1.0
        result("mid", "big", (0.8, 0.82, 0.9)),  # PGR 0.2
        result("mid", "mid", (0.8, 0.81, 0.8)),  # same size: left out
        result("big", "big", (0.9, 0.95, 0.9)),  # same size: left out
    ]
    # A pair whose ceiling does not beat its weak model has no PGR.
    results.append(result("small", "big", (0.7, 0.8, 0.65), loss="aux_conf"))
    results.append(result("small", "mid", (0.6, 0.66, 0.8), loss="aux_conf"))  # PGR 0.3
    pairs, summary = tables.tables(results)
    xent = summary.set_index("loss").loc["xent"]
    assert xent["median_pgr"] == pytest.approx(0.5)
    assert xent["pairs_used"] == 3 and xent["pairs_left_out_same_size"] == 2
    assert xent["pairs_left_out_ceiling_le_weak"] == 0
    assert math.isnan(xent["pgr_low"])  # one seed: no interval
    aux = summary.set_index("loss").loc["aux_conf"]
    assert aux["median_pgr"] == pytest.approx(0.3)
    assert aux["pairs_used"] == 1 and aux["pairs_left_out_ceiling_le_weak"] == 1
    status = pairs.set_index(["loss", "weak", "strong"])["status"]
    assert status[("xent", "mid", "mid")] == "same size"
    assert status[("aux_conf", "small", "big")] == "ceiling <= weak"
    assert status[("xent", "small", "big")] == "ok"
    # Rows run from the smallest weak model up, then by strong model size.
    assert list(pairs[pairs["loss"] == "xent"]["weak"]) == ["small", "small", "mid", "mid", "big"]


def test_seeds_give_a_student_t_interval_around_the_mean_of_per_seed_medians():
    pgrs = {0: [0.2, 0.6], 1: [0.3, 0.5], 2: [0.0, 0.4]}  # per seed: PGR of the two pairs
    results = []
    for seed, (first, second) in pgrs.items():
        results.append(result("small", "mid", (0.5, 0.5 + 0.3 * first, 0.8), seed=seed))
        results.append(result("small", "big", (0.5, 0.5 + 0.4 * second, 0.9), seed=seed))
    _, summary = tables.tables(results)
    row = summary.iloc[0]
    medians = [statistics.median(v) for v in pgrs.values()]
    half = 4.302652729911275 * statistics.stdev(medians) / math.sqrt(3)  # t(0.975, df=2)
    assert row["seeds"] == 3 and row["pairs_used"] == 2
    assert row["median_pgr"] == pytest.approx(statistics.mean(medians))
    assert (row["pgr_low"], row["pgr_high"]) == pytest.approx((row["median_pgr"] - half, row["median_pgr"] + half))


def test_accounting_counts_distinct_stages_and_those_trained_here():
    results = [
        result("small", "mid", (0.6, 0.7, 0.8)),
        result("small", "big", (0.6, 0.7, 0.9)),
        result("small", "mid", (0.6, 0.7, 0.8), loss="aux_conf"),
    ]
    counts = report.accounting(results, skipped=[{"skipped": "same size"}])
    assert counts["experiments"] == 3 and counts["skipped_jobs"] == 1
    assert counts["ground_truth_models"] == 3  # small, mid, big on one task and seed
    assert counts["ground_truth_stages_used"] == 3
    assert counts["ground_truth_stages_trained_here"] == 1  # only the weak stages say reused=False here
    assert counts["transfer_stages_used"] == 3 == counts["transfer_stages_trained_here"]
    # Three jobs each say they trained the one weak stage: a cache that failed to share it.
    assert counts["stages_trained_by_several_jobs"] == ["gt-sst2-small-0"]


def test_build_writes_tables_figures_and_markdown(tmp_path):
    results = [
        result("small", "mid", (0.6, 0.7, 0.8)),
        result("small", "big", (0.6, 0.7, 0.9)),
        result("mid", "big", (0.8, 0.85, 0.9)),
        result("small", "mid", (0.6, 0.75, 0.8), loss="aux_conf"),
    ]
    built = report.build(results, [], tmp_path / "out")
    out = tmp_path / "out"
    for name in ("pairs.csv", "summary.csv", "pairs.md", "summary.md", "report.md", "accounting.json"):
        assert (out / name).stat().st_size > 0, name
    assert [f.name for f in built["figures"]] == ["sst2_accuracy.png", "pgr.png"]
    for figure in built["figures"]:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert "| sst2   | direct   | xent" in (out / "summary.md").read_text()
    assert json.loads((out / "accounting.json").read_text())["experiments"] == 4


def test_the_report_lists_the_models_smallest_first_with_what_their_config_says(tmp_path):
    instruct = "an instruction-tuned code model, not a base model"
    results = [result("small", "big", (0.6, 0.7, 0.9), strong__about=instruct), result("mid", "big", (0.8, 0.85, 0.9))]
    report.build(results, [], tmp_path / "out")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert (
        f"## Models\n\n- small (1M parameters)\n- mid (2M parameters)\n- big (3M parameters): {instruct}\n" in markdown
    )


def test_missing_or_empty_folders_are_named(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        report.read_folder(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no results.json under"):
        report.read_folder(tmp_path)
    with pytest.raises(ConfigError, match="no multirun folders"):
        report.newest_multirun(tmp_path)


def test_bootstrapped_runs_show_every_rung_beside_the_direct_transfer():
    bootstrapped = result("small", "big", (0.6, 0.7, 0.9))
    bootstrapped["method"] = "bootstrap"
    bootstrapped["stages"]["rung1"] = {"model": "mid", "acc": 0.75, "auroc": 0.8, "key": "r1", "reused": False}
    bootstrapped["stages"]["bootstrap"] = {"model": "big", "acc": 0.81, "auroc": 0.85, "key": "b", "reused": False}
    pairs, summary = tables.tables([bootstrapped, result("small", "big", (0.6, 0.7, 0.9))])
    row = pairs.set_index("method").loc["bootstrap"]
    assert row["rung1_model"] == "mid" and row["rung1_acc"] == pytest.approx(0.75)
    assert row["bootstrap_acc"] == pytest.approx(0.81)
    assert row["pgr_bootstrap"] == pytest.approx((0.81 - 0.6) / (0.9 - 0.6))
    assert row["pgr"] == pytest.approx((0.7 - 0.6) / (0.9 - 0.6))  # the direct transfer, beside it
    assert summary.set_index("method").loc["bootstrap", "median_pgr_bootstrap"] == pytest.approx(0.7)
    assert math.isnan(summary.set_index("method").loc["direct", "median_pgr_bootstrap"])


def test_a_swept_setting_becomes_a_column_and_its_values_are_not_pooled_as_seeds():
    """loss.fn.aux_coef swept over two values, three seeds each: two rows of three seeds."""
    results = [
        result("small", "big", (0.6, 0.6 + 0.3 * pgr, 0.9), seed=seed, loss="aux_conf", loss__fn__aux_coef=coef)
        for coef, pgrs in ((0.5, (0.2, 0.3, 0.4)), (0.75, (0.6, 0.7, 0.8)))
        for seed, pgr in enumerate(pgrs)
    ]
    pairs, summary = tables.tables(results)
    assert "loss.fn.aux_coef" in summary.columns and "loss.fn.aux_coef" in pairs.columns
    assert "seed" not in summary.columns and "paths.output_dir" not in summary.columns  # seeds, not variants
    rows = summary.set_index("loss.fn.aux_coef")
    assert list(rows["seeds"]) == [3, 3]
    assert rows.loc["0.5", "median_pgr"] == pytest.approx(0.3) and rows.loc["0.75", "median_pgr"] == pytest.approx(0.7)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n) with three seeds
    assert rows.loc["0.5", "pgr_high"] - rows.loc["0.5", "median_pgr"] == pytest.approx(half)
    assert list(pairs["seeds"]) == [3, 3]


def test_settings_that_follow_the_pair_are_no_variants():
    """The models' own settings differ between pairs, but never inside one: no extra column."""
    results = [
        result("small", "mid", (0.6, 0.7, 0.8), weak__lr=1e-4, strong__lr=5e-5),
        result("mid", "big", (0.7, 0.8, 0.9), weak__lr=5e-5, strong__lr=1e-5),
    ]
    pairs, summary = tables.tables(results)
    assert not [c for c in pairs.columns if "." in c] and len(summary) == 1


def test_a_setting_at_null_beside_a_value_is_a_variant_not_more_seeds():
    """train.length_buckets=8 and =null over three seeds each: two rows of three seeds."""
    results = [
        result("small", "big", (0.6, 0.7, 0.9), seed=seed, train__length_buckets=buckets)
        for seed in range(3)
        for buckets in (8, None)
    ]
    pairs, _ = tables.tables(results)
    assert sorted(pairs["train.length_buckets"]) == ["8", "null"] and list(pairs["seeds"]) == [3, 3]


def test_a_weak_model_trained_on_other_devices_in_another_run_is_a_variant():
    """paper_nlp's one-GPU runs beside paper_nlp_7b's, whose weak rungs FSDP retrains: the same
    weak model with two accuracies, each named by its device layout."""
    one_gpu = {"strategy": "auto", "devices": 1, "precision": "bf16-mixed"}
    fsdp = {
        "strategy": {"_target_": "lightning.pytorch.strategies.FSDPStrategy"},
        "devices": 8,
        "precision": "bf16-mixed",
    }
    results = [
        result("small", "mid", (0.6, 0.7, 0.8), trainer=one_gpu),
        result("small", "big", (0.62, 0.7, 0.9), trainer=fsdp),
    ]
    pairs, summary = tables.tables(results)
    layouts = pairs.set_index("strong")[tables.LAYOUT]
    assert layouts["mid"] == "auto, 1 x 1, bf16-mixed" and layouts["big"] == "FSDPStrategy, 8 x 1, bf16-mixed"
    assert len(summary) == 2  # not pooled into one median
    # One layout throughout: no column.
    same = [
        result("small", "mid", (0.6, 0.7, 0.8), trainer=one_gpu),
        result("small", "big", (0.6, 0.7, 0.9), trainer=one_gpu),
    ]
    assert tables.LAYOUT not in tables.tables(same)[0].columns


def test_a_gap_within_the_test_noise_is_flagged_and_left_out_of_the_median():
    # On 200 test examples two standard errors of a 0.70 vs 0.72 difference are 9 points.
    noisy = result("small", "mid", (0.70, 0.80, 0.72), n_test=200)  # PGR 5.0 over a 2-point gap
    clear = result("small", "big", (0.70, 0.80, 0.90), n_test=200)  # PGR 0.5 over a 20-point gap
    pairs, summary = tables.tables([noisy, clear])
    status = pairs.set_index("strong")["status"]
    assert status["mid"] == "gap within noise" and status["big"] == "ok"
    row = summary.iloc[0]
    assert row["median_pgr"] == pytest.approx(0.5) and row["pairs_used"] == 1
    assert row["pairs_left_out_gap_within_noise"] == 1 and row["pairs_left_out_ceiling_le_weak"] == 0
    # The same two-point gap measured on 10,000 examples is resolved, and counts.
    _, summary = tables.tables([result("small", "mid", (0.70, 0.80, 0.72), n_test=10_000), clear])
    assert summary.iloc[0]["pairs_used"] == 2


def test_each_method_gets_its_own_accuracy_figure_with_its_own_weak_and_ceiling(tmp_path):
    baseline = [
        result("small", "big", (0.6, 0.7, 0.9), seed=s, loss=loss) for s in range(3) for loss in ("xent", "aux_conf")
    ]
    generative = result("small", "big", (0.6, 0.8, 0.95))
    generative["method"] = "generative"
    drawn = figures.accuracy_figures(tables.tables([*baseline, generative])[0])
    assert set(drawn) == {"sst2_method=direct_accuracy", "sst2_method=generative_accuracy"}
    title, rows = drawn["sst2_method=direct_accuracy"]
    assert "direct" in title and set(rows["ceiling_acc"]) == {0.9} and set(rows["loss"]) == {"xent", "aux_conf"}
    # Three seeds: the transfer's interval is there to draw (zero-width here: the seeds agree).
    assert (rows["transfer_acc_low"] <= rows["transfer_acc"]).all() and rows["seeds"].eq(3).all()
    figure = figures.plot_accuracy(rows, title)
    lines = [line for line in figure.axes[0].get_lines() if line.get_marker() not in ("None", None, "")]
    styles = {(line.get_marker(), line.get_color()) for line in lines if not line.get_label().startswith("ground")}
    assert len({m for m, _ in styles}) >= 2 and len({str(c) for _, c in styles}) >= 2  # losses differ in both


def test_a_pair_is_in_or_out_on_its_means_over_seeds_not_seed_by_seed():
    # Seed 1's ceiling dips below its weak model, but over three seeds the ceiling is 10 points up.
    runs = [
        result("small", "big", accs, seed=seed)
        for seed, accs in enumerate([(0.70, 0.78, 0.85), (0.72, 0.71, 0.70), (0.68, 0.80, 0.85)])
    ]
    pairs, summary = tables.tables(runs)
    assert pairs.iloc[0]["status"] == "ok"
    row = summary.iloc[0]
    assert row["pairs_used"] == 1 and row["seeds"] == 3
    # Every seed's PGR counts, seed 1's included (its own PGR is undefined, so NaN, and dropped).
    expected = statistics.mean([(0.78 - 0.70) / 0.15, (0.80 - 0.68) / 0.17])
    assert row["median_pgr"] == pytest.approx(expected)


def test_a_rerun_into_a_sibling_folder_counts_once_and_is_named(caplog):
    first = result("small", "big", (0.6, 0.7, 0.9), seed=0)
    again = json.loads(json.dumps(first))
    again["config"]["paths"]["output_dir"] = "out/rerun/0"
    other_seed = result("small", "big", (0.6, 0.8, 0.9), seed=1)
    pairs, summary = tables.tables([first, again, other_seed])
    assert pairs.iloc[0]["seeds"] == 2 and summary.iloc[0]["seeds"] == 2
    assert "out/rerun/0 repeats the run in out/small-big-xent-0" in caplog.text


def test_oracle_selection_is_always_a_column():
    runs = [result("small", "big", (0.6, 0.7, 0.9), select__name="oracle_val")]
    pairs, summary = tables.tables(runs)
    assert pairs.iloc[0]["select.name"] == "oracle_val" and summary.iloc[0]["select.name"] == "oracle_val"
    plain = tables.tables([result("small", "big", (0.6, 0.7, 0.9), select__name="last")])[0]
    assert "select.name" not in plain.columns  # not a variant when no run reads ground truth


def test_a_wandb_summary_names_each_stages_own_model_a_rung_included():
    bootstrapped = result("small", "big", (0.6, 0.7, 0.9))
    bootstrapped["method"] = "bootstrap"
    for role, model in (("weak", "small"), ("transfer", "big"), ("ceiling", "big")):
        bootstrapped["stages"][role]["model"] = model
    bootstrapped["stages"]["rung1"] = {"model": "mid", "acc": 0.75, "auroc": 0.8, "key": "r1", "reused": False}
    bootstrapped["config"]["task"] = {"name": "sst2"}
    summary = Results.from_dict(bootstrapped).wandb_summary()
    back = Results.from_wandb(summary, bootstrapped["config"])
    assert {role: stage.model for role, stage in back.stages.items()} == {
        "weak": "small",
        "rung1": "mid",
        "transfer": "big",
        "ceiling": "big",
    }
    assert back.pgr() == pytest.approx((0.7 - 0.6) / (0.9 - 0.6)) and back.method == "bootstrap"


def test_one_setting_written_as_0_and_as_0_0_is_one_variant_and_the_seeds_pool():
    """task.ranges.Rating=[1500, 2000] in one run and [1500.0, 2000] in another (the same
    setting; a list keeps each number's own type): no variant column, three seeds in one row."""
    results = [
        result("small", "big", (0.6, 0.7, 0.9), seed=seed, task__ranges__Rating=value)
        for seed, value in enumerate(([1500, 2000], [1500.0, 2000], [1500, 2000.0]))
    ]
    pairs, _ = tables.tables(results)
    assert "task.ranges.Rating" not in pairs.columns and list(pairs["seeds"]) == [3]


def test_a_task_without_a_pgr_keeps_its_slot_and_label_inside_the_pgr_figure():
    # The last task's gap is within noise, so it has no PGR: its "n/a" must still sit on the axes.
    runs = [result("small", "big", (0.6, 0.7, 0.9), loss=loss) for loss in ("xent", "aux_conf")]
    runs += [result("small", "big", (0.6, 0.6, 0.601), task="wic", loss=loss) for loss in ("xent", "aux_conf")]
    summary = tables.tables(runs)[1]
    assert summary.set_index("task").loc["wic", "median_pgr"].isna().all()
    ax = figures.plot_pgr(summary).axes[0]
    left, right = ax.get_xlim()
    labels = [text for text in ax.texts if text.get_text() == "n/a"]
    assert len(labels) == 2 and all(left < text.get_position()[0] < right for text in labels)
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["sst2", "wic"]
