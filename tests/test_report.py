"""The report's arithmetic on hand-made results: which pairs count, medians, intervals."""

import json
import math
import statistics

import pytest

from w2s_lightning import report
from w2s_lightning.errors import ConfigError

PARAMS = {"small": 1e6, "mid": 2e6, "big": 3e6}


def result(weak, strong, accs, seed=0, loss="xent", task="sst2"):
    weak_acc, transfer_acc, ceiling_acc = accs
    return {
        "task": task, "loss": loss, "seed": seed, "weak_model": weak, "strong_model": strong,
        "stages": {
            "weak": {"acc": weak_acc, "auroc": weak_acc, "key": f"gt-{task}-{weak}-{seed}", "reused": False},
            "transfer": {"acc": transfer_acc, "auroc": transfer_acc, "key": f"tr-{weak}-{strong}-{loss}-{seed}",
                         "reused": False},
            "ceiling": {"acc": ceiling_acc, "auroc": ceiling_acc, "key": f"gt-{task}-{strong}-{seed}", "reused": True},
        },
        "config": {"weak": {"params": PARAMS[weak]}, "strong": {"params": PARAMS[strong]}},
    }


def test_summary_is_the_median_over_valid_pairs_and_counts_the_left_out():
    results = [
        result("small", "mid", (0.6, 0.7, 0.8)),     # PGR 0.5
        result("small", "big", (0.6, 0.9, 0.9)),     # PGR 1.0
        result("mid", "big", (0.8, 0.82, 0.9)),      # PGR 0.2
        result("mid", "mid", (0.8, 0.81, 0.8)),      # same size: left out
        result("big", "big", (0.9, 0.95, 0.9)),      # same size: left out
    ]
    # A pair whose ceiling does not beat its weak model has no PGR.
    results.append(result("small", "big", (0.7, 0.8, 0.65), loss="aux_conf"))
    results.append(result("small", "mid", (0.6, 0.66, 0.8), loss="aux_conf"))  # PGR 0.3
    pairs, summary = report.tables(results)
    xent = summary.set_index("loss").loc["xent"]
    assert xent["median_pgr"] == pytest.approx(0.5)
    assert xent["pairs_used"] == 3 and xent["same_size_left_out"] == 2 and xent["ceiling_le_weak_left_out"] == 0
    assert math.isnan(xent["pgr_low"])  # one seed: no interval
    aux = summary.set_index("loss").loc["aux_conf"]
    assert aux["median_pgr"] == pytest.approx(0.3)
    assert aux["pairs_used"] == 1 and aux["ceiling_le_weak_left_out"] == 1
    status = pairs.set_index(["loss", "weak", "strong"])["status"]
    assert status[("xent", "mid", "mid")] == "same size"
    assert status[("aux_conf", "small", "big")] == "ceiling <= weak (1/1 seeds)"
    assert status[("xent", "small", "big")] == "ok"
    # Rows run from the smallest weak model up, then by strong model size.
    assert list(pairs[pairs["loss"] == "xent"]["weak"]) == ["small", "small", "mid", "mid", "big"]


def test_seeds_give_a_student_t_interval_around_the_mean_of_per_seed_medians():
    pgrs = {0: [0.2, 0.6], 1: [0.3, 0.5], 2: [0.0, 0.4]}  # per seed: PGR of the two pairs
    results = []
    for seed, (first, second) in pgrs.items():
        results.append(result("small", "mid", (0.5, 0.5 + 0.3 * first, 0.8), seed=seed))
        results.append(result("small", "big", (0.5, 0.5 + 0.4 * second, 0.9), seed=seed))
    _, summary = report.tables(results)
    row = summary.iloc[0]
    medians = [statistics.median(v) for v in pgrs.values()]
    half = 4.302652729911275 * statistics.stdev(medians) / math.sqrt(3)  # t(0.975, df=2)
    assert row["seeds"] == 3 and row["pairs_used"] == 2
    assert row["median_pgr"] == pytest.approx(statistics.mean(medians))
    assert (row["pgr_low"], row["pgr_high"]) == pytest.approx((row["median_pgr"] - half, row["median_pgr"] + half))


def test_accounting_counts_distinct_stages_and_those_trained_here():
    results = [result("small", "mid", (0.6, 0.7, 0.8)), result("small", "big", (0.6, 0.7, 0.9)),
               result("small", "mid", (0.6, 0.7, 0.8), loss="aux_conf")]
    counts = report.accounting(results, skipped=[{"skipped": "same size"}])
    assert counts["experiments"] == 3 and counts["skipped_jobs"] == 1
    assert counts["ground_truth_models"] == 3  # small, mid, big on one task and seed
    assert counts["ground_truth_stages_used"] == 3
    assert counts["ground_truth_stages_trained_here"] == 1  # only the weak stages say reused=False here
    assert counts["transfer_stages_used"] == 3 == counts["transfer_stages_trained_here"]


def test_build_writes_tables_figures_and_markdown(tmp_path):
    results = [result("small", "mid", (0.6, 0.7, 0.8)), result("small", "big", (0.6, 0.7, 0.9)),
               result("mid", "big", (0.8, 0.85, 0.9)), result("small", "mid", (0.6, 0.75, 0.8), loss="aux_conf")]
    built = report.build(results, [], tmp_path / "out")
    out = tmp_path / "out"
    for name in ("pairs.csv", "summary.csv", "pairs.md", "summary.md", "report.md", "accounting.json"):
        assert (out / name).stat().st_size > 0, name
    assert [f.name for f in built["figures"]] == ["sst2_accuracy.png", "pgr.png"]
    for figure in built["figures"]:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert "| sst2   | baseline | xent" in (out / "summary.md").read_text()
    assert json.loads((out / "accounting.json").read_text())["experiments"] == 4


def test_missing_or_empty_folders_are_named(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        report.read_folder(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no results.json under"):
        report.read_folder(tmp_path)
    with pytest.raises(ConfigError, match="no multirun folders"):
        report.newest_multirun(tmp_path)


def test_bootstrapped_runs_show_every_rung_beside_the_direct_transfer():
    chained = result("small", "big", (0.6, 0.7, 0.9))
    chained["method"] = "chain=mid"
    chained["stages"]["rung1"] = {"model": "mid", "acc": 0.75, "auroc": 0.8, "key": "r1", "reused": False}
    chained["stages"]["bootstrap"] = {"model": "big", "acc": 0.81, "auroc": 0.85, "key": "b", "reused": False}
    pairs, summary = report.tables([chained, result("small", "big", (0.6, 0.7, 0.9))])
    row = pairs.set_index("method").loc["chain=mid"]
    assert row["rung1_model"] == "mid" and row["rung1_acc"] == pytest.approx(0.75)
    assert row["bootstrap_acc"] == pytest.approx(0.81)
    assert row["pgr_bootstrap"] == pytest.approx((0.81 - 0.6) / (0.9 - 0.6))
    assert row["pgr"] == pytest.approx((0.7 - 0.6) / (0.9 - 0.6))  # the direct transfer, beside it
    assert summary.set_index("method").loc["chain=mid", "median_pgr_bootstrap"] == pytest.approx(0.7)
    assert math.isnan(summary.set_index("method").loc["baseline", "median_pgr_bootstrap"])
