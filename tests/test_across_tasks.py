"""Statistics across tasks on hand-made results files: the bootstrap interval over tasks, the
share of tasks with PGR > 0, and the paired differences with their Wilcoxon test."""

import math

import numpy as np
import pytest
from test_report import result

from w2s_lightning import across_tasks, report, tables

TASK_PGRS = {"t1": 0.1, "t2": 0.3, "t3": -0.2, "t4": 0.5, "t5": 0.4}


def runs(pgrs, loss="xent", seeds=(0,), method=None, shift=0.0):
    """One (small, big) pair per task: weak 0.6, ceiling 0.8, transfer at the given PGR."""
    made = []
    for task, pgr in pgrs.items():
        for seed in seeds:
            run = result("small", "big", (0.6, 0.6 + 0.2 * (pgr + shift * seed), 0.8), seed=seed, loss=loss, task=task)
            if method:
                run["method"] = run["config"]["method"] = method
            made.append(run)
    return made


def test_the_median_over_tasks_has_a_bootstrap_interval_over_tasks_and_a_share_above_zero():
    noisy = result("small", "big", (0.6, 0.7, 0.601), task="t6")  # gap within noise: no PGR
    _, summary = tables.tables([*runs(TASK_PGRS), noisy])
    row = across_tasks.task_medians(summary).iloc[0]
    assert row["tasks"] == 5 and row["tasks_without_pgr"] == 1
    assert row["median_pgr"] == pytest.approx(0.3)
    # A resample of five tasks has the smallest value as its median with probability
    # P(Binomial(5, 1/5) >= 3) = 5.8% > 2.5%: with five tasks the interval spans them all.
    assert (row["pgr_low"], row["pgr_high"]) == pytest.approx((-0.2, 0.5))
    # 4 of 5 above zero; the Clopper-Pearson 95% interval of 4/5 is [0.284, 0.995].
    assert row["share_pgr_positive"] == pytest.approx(0.8)
    assert (row["share_low"], row["share_high"]) == pytest.approx((0.2836, 0.9949), abs=1e-3)


def test_the_bootstrap_interval_is_reproducible_and_needs_two_tasks():
    values = np.array(list(TASK_PGRS.values()))
    assert across_tasks.median_interval(values) == across_tasks.median_interval(values)
    assert all(math.isnan(x) for x in across_tasks.median_interval(values[:1]))
    assert across_tasks.median_interval(np.array([0.2, 0.2, 0.2])) == (0.2, 0.2)
    low, high = across_tasks.median_interval(np.linspace(0, 1, 21))  # 21 tasks: well inside their range
    assert 0.15 < low < 0.5 < high < 0.85


def test_aux_conf_against_xent_is_paired_per_task_and_seed_with_a_wilcoxon_test():
    pgrs = {f"t{i}": 0.1 * i for i in range(6)}
    # aux_conf beats xent by 0.1 on every task, by 0.05-0.15 over seeds (0.05 + 0.05 * seed).
    xent = runs(pgrs, seeds=(0, 1, 2))
    aux = runs({t: p + 0.05 for t, p in pgrs.items()}, loss="aux_conf", seeds=(0, 1, 2), shift=0.05)
    records = tables.records_table([*xent, *aux])
    per_task, tests = across_tasks.paired_differences(records)
    assert list(tests["comparison"]) == ["direct/aux_conf - direct/xent"]
    test = tests.iloc[0]
    assert test["tasks"] == 6 and test["tasks_candidate_higher"] == 6
    assert test["median_difference"] == pytest.approx(0.1)
    assert test["wilcoxon_p"] == pytest.approx(2 / 2**6)  # exact: all six signs positive, two-sided
    row = per_task.set_index("task").loc["t3"]
    assert row["difference"] == pytest.approx(0.1) and row["seeds"] == 3
    # Student-t over the three seeds' differences 0.05, 0.10, 0.15: half-width t(0.975, 2) * 0.05 / sqrt(3).
    assert row["high"] - row["difference"] == pytest.approx(4.302652729911275 * 0.05 / math.sqrt(3))


def test_a_method_is_paired_with_direct_on_xent_and_mixed_signs_are_not_significant():
    pgrs = {f"t{i}": 0.3 for i in range(6)}
    direct = runs(pgrs)
    better_or_worse = dict(zip(pgrs, [0.4, 0.2, 0.35, 0.25, 0.5, 0.1], strict=True))
    bootstrap = runs(better_or_worse, method="bootstrap")
    _, tests = across_tasks.paired_differences(tables.records_table([*direct, *bootstrap]))
    test = tests.set_index("comparison").loc["bootstrap/xent - direct/xent"]
    assert test["tasks_candidate_higher"] == 3 and test["median_difference"] == pytest.approx(0.0)
    assert test["wilcoxon_p"] > 0.5


def test_pairs_whose_pgr_is_not_read_take_no_part_in_a_difference():
    clear = runs({"t1": 0.2})
    noisy = [result("small", "big", (0.6, 0.6, 0.601), task="t2")]
    aux = runs({"t1": 0.4}, loss="aux_conf") + [result("small", "big", (0.6, 0.7, 0.601), task="t2", loss="aux_conf")]
    per_task, tests = across_tasks.paired_differences(tables.records_table([*clear, *noisy, *aux]))
    assert list(per_task["task"]) == ["t1"] and tests.iloc[0]["tasks"] == 1
    assert math.isnan(tests.iloc[0]["wilcoxon_p"])  # one task: nothing to test


def test_a_run_on_other_ground_truth_stages_is_left_out_of_its_difference_and_named(caplog):
    # Seed 2 of aux_conf was rerun elsewhere: its weak model is another stage, so its PGR
    # difference would mix two gaps.
    xent = runs({"t1": 0.2, "t2": 0.2}, seeds=(0, 1, 2))
    aux = runs({"t1": 0.4, "t2": 0.4}, loss="aux_conf", seeds=(0, 1, 2))
    for run in aux:
        if run["task"] == "t2" and run["seed"] == 2:
            run["stages"]["weak"]["key"] = "gt-retrained-elsewhere"
    per_task, _ = across_tasks.paired_differences(tables.records_table([*xent, *aux]))
    assert per_task.set_index("task")["seeds"].to_dict() == {"t1": 3, "t2": 2}
    assert "1 run(s) left out (t2 seed 2)" in caplog.text
    # Results written before stages had keys cannot be checked, and still pair.
    for run in [*xent, *aux]:
        run["stages"]["weak"].pop("key")
    per_task, _ = across_tasks.paired_differences(tables.records_table([*xent, *aux]))
    assert per_task.set_index("task")["seeds"].to_dict() == {"t1": 3, "t2": 3}


def test_the_report_writes_the_cross_task_tables_and_figures(tmp_path):
    built = report.build([*runs(TASK_PGRS), *runs(TASK_PGRS, loss="aux_conf", shift=0.0)], [], tmp_path)
    assert {f.name for f in built["figures"]} >= {"pgr.png", "transfer_vs_ceiling.png"}
    text = (tmp_path / "report.md").read_text()
    assert "## Across tasks" in text and "## Paired differences" in text
    assert (tmp_path / "tests.csv").read_text().startswith("comparison,tasks,median_difference")
