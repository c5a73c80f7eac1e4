"""wame_dist.report: Table 2 values by hand, the files written, the CLI, and the aligned-ranks test."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from wame_dist.report import chosen_runs, friedman_aligned_ranks, main, read_runs, write_report

# --- a synthetic results file ---

ACCURACY = {"sgd": [0.90, 0.91, 0.92], "rmsprop": [0.93, 0.95, 0.94], "adam": [0.94, 0.93, 0.95]}
ACCURACY["wame"] = [0.95, 0.96, 0.97]
BEST_EPOCH = {"sgd": [9, 10, 8], "rmsprop": [6, 8, 7], "adam": [7, 6, 8], "wame": [5, 7, 9]}
SECONDS = {"sgd": [30, 30, 30], "rmsprop": [60, 60, 60], "adam": [60, 90, 120], "wame": [60, 120, 180]}
LR = {"sgd": 0.01, "rmsprop": 0.001, "adam": 0.001, "wame": 0.003}


def record(dataset: str, optimizer: str, seed: int, lr: float, **fields: object) -> dict:
    """One line of the results file; the training loss of epoch e is 1 / e plus a seed offset."""
    epochs = [
        {"epoch": e, "train_loss": 1 / e + 0.1 * seed, "val_acc": 0.9, "test_acc": 0.9, "wall_s": 10.0 * e}
        for e in range(1, 11)
    ]
    line = {
        "key": {"dataset": dataset, "model": "table1a", "optimizer": optimizer, "seed": seed, "lr": lr},
        "init_hash": "0" * 64,
        "epochs": epochs,
        "best_epoch": 5,
        "test_acc_at_best": 0.5,
        "time_to_best_s": 1.0,
        "settings": {},
    }
    return line | fields


def write_results(path: Path) -> Path:
    """digits: 3 seeds x 4 optimizers at the chosen lr (role "final"), plus tuning runs at other lrs that
    the report must ignore, and a rerun of a final run that replaces its first line. mnist: Adam only,
    no run marked final, two lrs (all are used)."""
    lines = []
    for optimizer in ACCURACY:
        for seed in range(3):
            lines.append(record("digits", optimizer, seed, 10 * LR[optimizer], settings={"role": "tune"}))
            first_try = {"best_epoch": 99, "test_acc_at_best": 0.1, "settings": {"role": "final"}}
            if optimizer == "wame" and seed == 1:
                lines.append(record("digits", optimizer, seed, LR[optimizer], **first_try))
            outcome = {
                "best_epoch": BEST_EPOCH[optimizer][seed],
                "test_acc_at_best": ACCURACY[optimizer][seed],
            }
            outcome |= {
                "time_to_best_s": SECONDS[optimizer][seed],
                "settings": {"role": "final", "epochs": 10},
            }
            lines.append(record("digits", optimizer, seed, LR[optimizer], **outcome))
    lines.append(record("mnist", "adam", 0, 0.001, test_acc_at_best=0.99, best_epoch=40))
    lines.append(record("mnist", "adam", 0, 0.01, test_acc_at_best=0.98, best_epoch=20))
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n", encoding="utf-8")
    return path


def test_chosen_runs_prefer_final_runs_and_the_last_of_duplicates(tmp_path: Path) -> None:
    groups = chosen_runs(read_runs(write_results(tmp_path / "results.jsonl")))
    assert list(groups) == [("digits", "table1a"), ("mnist", "table1a")]
    assert list(groups["digits", "table1a"]) == ["sgd", "rmsprop", "adam", "wame"]  # the paper's order
    wame = groups["digits", "table1a"]["wame"]
    assert [(run.seed, run.lr, run.best_epoch) for run in wame] == [
        (0, 0.003, 5),
        (1, 0.003, 7),
        (2, 0.003, 9),
    ]
    assert [run.lr for run in groups["mnist", "table1a"]["adam"]] == [0.001, 0.01]


def read_csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as lines:
        return {(row["dataset"], row["optimizer"]): row for row in csv.DictReader(lines)}


def test_table2_values_by_hand(tmp_path: Path) -> None:
    write_report(write_results(tmp_path / "results.jsonl"), tmp_path / "report")
    rows = read_csv(tmp_path / "report" / "table2.csv")

    wame = rows["digits", "wame"]
    # accuracies 95, 96, 97 %: mean 96, sample sigma sqrt(((-1)^2 + 0 + 1^2) / 2) = 1
    assert [float(wame[c]) for c in ("acc_mean", "acc_sigma", "acc_min", "acc_max")] == pytest.approx(
        [96, 1, 95, 97]
    )
    # epochs 5, 7, 9: mean 7, sigma sqrt((4 + 0 + 4) / 2) = 2; times 60, 120, 180 s: 2 minutes
    assert [float(wame[c]) for c in ("epoch_mean", "epoch_sigma", "epoch_min", "epoch_max")] == [7, 2, 5, 9]
    assert float(wame["minutes_mean"]) == pytest.approx(2.0)
    assert (wame["lr"], wame["n_runs"], wame["n_seeds"]) == ("0.003", "3", "3")

    sgd = rows["digits", "sgd"]  # 90, 91, 92 %; epochs 9, 10, 8; 30 s each
    assert float(sgd["acc_mean"]) == pytest.approx(91) and float(sgd["acc_sigma"]) == pytest.approx(1)
    assert float(sgd["epoch_mean"]) == 9 and float(sgd["epoch_sigma"]) == 1
    assert float(sgd["minutes_mean"]) == pytest.approx(0.5)

    adam_mnist = rows["mnist", "adam"]  # no final run: both lrs count, one seed
    assert (adam_mnist["lr"], adam_mnist["n_runs"], adam_mnist["n_seeds"]) == ("0.001 0.01", "2", "1")
    assert float(adam_mnist["acc_mean"]) == pytest.approx(98.5)


def test_markdown_table_sits_beside_the_papers_rows(tmp_path: Path) -> None:
    write_report(write_results(tmp_path / "results.jsonl"), tmp_path / "report")
    markdown = (tmp_path / "report" / "table2.md").read_text()

    assert "ddof = 1" in markdown
    assert (
        "| WAME | measured | 0.003 | 3 | 96.00 | 1.00 | 95.00 | 97.00 | 7.00 | 2.00 | 5 | 9 | 2.00 |"
        in markdown
    )
    assert (
        "| RMSprop | measured | 0.001 | 3 | 94.00 | 1.00 | 93.00 | 95.00 | 7.00 | 1.00 | 6 | 8 | 1.00 |"
        in markdown
    )
    # digits is not in the paper; MNIST is, and its Adam row follows ours
    digits_section = markdown.split("## digits")[1].split("## MNIST")[0]
    assert "*paper*" not in digits_section
    assert (
        "| Adam | *paper* | | 20 | 99.53 | 0.04 | 99.45 | 99.60 | 49.30 | 18.78 | 14 | 90 | 49 |" in markdown
    )
    assert "| Adam | measured | 0.001 0.01 | 1 | 98.50 | 0.71 |" in markdown


def test_report_writes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report"
    paths = write_report(write_results(tmp_path / "results.jsonl"), out)
    names = sorted(path.name for path in paths)
    assert names == [
        "figure1_digits_table1a.png",
        "figure1_mnist_table1a.png",
        "friedman.json",
        "friedman.md",
        "paired.json",
        "paired.md",
        "table2.csv",
        "table2.md",
    ]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_significance_files_hold_one_test_per_metric(tmp_path: Path) -> None:
    write_report(write_results(tmp_path / "results.jsonl"), tmp_path / "report")
    tests = json.loads((tmp_path / "report" / "friedman.json").read_text())
    digits = next(t for t in tests if t["dataset"] == "digits")
    assert digits["seeds"] == [0, 1, 2] and digits["dropped_seeds"] == []

    accuracy = [[ACCURACY[o][seed] for o in ACCURACY] for seed in range(3)]
    expected = friedman_aligned_ranks(accuracy)
    result = digits["metrics"]["test_acc_at_best"]
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.p_value) and result["df"] == 3
    assert result["mean_ranks"]["wame"] == max(result["mean_ranks"].values())  # the highest accuracies
    assert set(digits["metrics"]) == {"test_acc_at_best", "best_epoch", "time_to_best_s"}

    mnist = next(t for t in tests if t["dataset"] == "mnist")
    assert "skipped" in mnist["metrics"]["best_epoch"]  # one optimizer: nothing to compare

    markdown = (tmp_path / "report" / "friedman.md").read_text()
    assert (
        f"| test accuracy at best epoch | {expected.statistic:.3f} | 3 | {expected.p_value:.4g} |" in markdown
    )


def test_cli_writes_the_report_and_lists_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = write_results(tmp_path / "results.jsonl")
    assert main([str(results), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "out" / "table2.md") in printed and len(printed) == 8


def test_a_study_folder_reports_as_its_results_file(tmp_path: Path) -> None:
    """A study folder's records/ (one file a run, named by its key) and the union results file give the
    same report; a folder with neither is refused."""
    union = write_results(tmp_path / "results.jsonl")
    study = tmp_path / "study"
    for number, line in enumerate(union.read_text().splitlines()):
        if line.strip():  # reruns of a key: numbered files keep the file order, as the lines have it
            (study / "records").mkdir(parents=True, exist_ok=True)
            (study / "records" / f"{number:03d}.json").write_text(line)
    write_report(union, tmp_path / "from_file")
    write_report(study, tmp_path / "from_folder")
    for name in ("table2.md", "table2.csv", "friedman.json"):
        assert (tmp_path / "from_folder" / name).read_text() == (tmp_path / "from_file" / name).read_text()
    with pytest.raises(FileNotFoundError, match="not a study folder: it has no records/ folder"):
        read_runs(tmp_path / "from_file")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "results not found"),
        ("\n\n", "holds no finished run"),
        ('{"key": {}}\n', ":1: not a valid"),
    ],
)
def test_cli_rejects_missing_empty_and_malformed_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    results = tmp_path / "results.jsonl"
    if content is not None:
        results.write_text(content)
    with pytest.raises(SystemExit) as caught:
        main([str(results), "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- the Friedman aligned-ranks test ---


def test_aligned_ranks_by_hand() -> None:
    """3 blocks x 3 treatments. Aligned: [-2, -1, 3], [-3, -1, 4], [0, 0, 0]; ranks over all nine:
    [2, 3.5, 8], [1, 3.5, 9], [6, 6, 6]; treatment totals 9, 13, 23; block totals 13.5, 13.5, 18.
    T = 2 (81 + 169 + 529 - (3 * 9 / 4) 100) / (9 * 10 * 19 / 6 - (182.25 + 182.25 + 324) / 3)
      = 208 / 55.5; with 2 degrees of freedom, p = exp(-T / 2)."""
    result = friedman_aligned_ranks([[1, 2, 6], [2, 4, 9], [3, 3, 3]])
    assert result.statistic == pytest.approx(208 / 55.5)
    assert result.p_value == pytest.approx(math.exp(-208 / 111))
    assert (result.df, result.n_blocks) == (2, 3)
    assert result.mean_ranks == pytest.approx((3, 13 / 3, 23 / 3))


# Garcia, Fernandez, Luengo & Herrera, Information Sciences 180 (2010) 2044-2064, case study: test
# accuracy of PDFC, NNEP, IS-CHC+1NN and FH-GBML (columns) on 24 data sets (rows), as distributed in
# the R package scmamp (Calvo & Santafe) as data.gh.2010.
GH_2010 = [
    [0.752, 0.773, 0.785, 0.795], [0.727, 0.748, 0.724, 0.713], [0.736, 0.716, 0.585, 0.638],
    [0.994, 0.861, 0.880, 0.791], [0.508, 0.553, 0.575, 0.515], [0.535, 0.536, 0.513, 0.471],
    [0.967, 0.871, 0.954, 0.532], [0.831, 0.807, 0.819, 0.768], [0.745, 0.702, 0.719, 0.705],
    [0.709, 0.572, 0.669, 0.607], [0.722, 0.728, 0.725, 0.732], [0.967, 0.947, 0.953, 0.960],
    [0.832, 0.752, 0.802, 0.691], [0.998, 0.992, 0.482, 0.910], [0.963, 0.963, 0.954, 0.926],
    [0.982, 0.953, 0.932, 0.630], [0.978, 0.773, 0.834, 0.849], [0.854, 0.787, 0.841, 0.779],
    [0.965, 0.984, 0.995, 0.947], [0.924, 0.887, 0.861, 0.804], [0.929, 0.942, 0.931, 0.921],
    [0.837, 0.643, 0.602, 0.554], [0.972, 0.956, 0.944, 0.922], [0.958, 0.959, 0.964, 0.964],
]  # fmt: skip

# Garcia & Herrera, JMLR 9 (2008) 2677-2694: accuracy of C4.5, 1-NN, NaiveBayes, Kernel and CN2
# (columns) on 30 data sets (rows); scmamp's data.gh.2008.
GH_2008 = [
    [0.219, 0.202, 0.249, 0.165, 0.261], [0.803, 0.750, 0.813, 0.692, 0.798],
    [0.859, 0.814, 0.845, 0.542, 0.816], [0.809, 0.774, 0.673, 0.275, 0.785],
    [0.768, 0.790, 0.727, 0.872, 0.706], [0.759, 0.654, 0.734, 0.703, 0.714],
    [0.693, 0.611, 0.572, 0.689, 0.572], [0.544, 0.531, 0.558, 0.439, 0.541],
    [0.945, 0.954, 0.978, 0.541, 0.858], [0.725, 0.705, 0.739, 0.625, 0.717],
    [0.674, 0.736, 0.721, 0.356, 0.704], [0.801, 0.357, 0.520, 0.309, 0.520],
    [0.785, 0.770, 0.841, 0.659, 0.759], [0.710, 0.402, 0.728, 0.120, 0.674],
    [0.691, 0.827, 0.667, 0.527, 0.638], [0.743, 0.739, 0.830, 0.549, 0.746],
    [0.990, 0.482, 0.941, 0.857, 0.990], [0.867, 0.098, 0.915, 0.986, 0.784],
    [0.821, 0.872, 0.815, 0.885, 0.778], [0.893, 0.824, 0.902, 0.739, 0.885],
    [0.799, 0.655, 0.925, 0.517, 0.755], [0.845, 0.731, 0.693, 0.653, 0.704],
    [0.741, 0.701, 0.591, 0.663, 0.619], [0.799, 0.994, 0.603, 0.269, 0.621],
    [0.949, 0.955, 0.989, 0.770, 0.954], [0.555, 0.505, 0.569, 0.312, 0.556],
    [0.928, 0.928, 0.945, 0.419, 0.897], [0.915, 0.857, 0.860, 0.700, 0.777],
    [0.855, 0.796, 0.857, 0.607, 0.809], [0.906, 0.359, 0.895, 0.641, 0.918],
]  # fmt: skip


def test_aligned_ranks_on_garcia_2010_case_study() -> None:
    """Reference: scmamp's friedmanAlignedRanksTest (R), which implements Garcia et al.'s formula, run on
    this data scaled to integers (x 4000) so that its floating-point alignment ties exactly:
    T = 22.267109, df = 3, p = 5.739365e-05. (On the raw decimals it prints T = 22.260048, because
    floating point splits a few ties.)"""
    result = friedman_aligned_ranks(GH_2010)
    assert result.statistic == pytest.approx(22.267109, abs=1e-6)
    assert result.p_value == pytest.approx(5.739365e-05, rel=1e-6)
    assert result.df == 3 and result.n_blocks == 24
    assert result.mean_ranks == pytest.approx((67.6458333, 50.2291667, 50.0416667, 26.0833333))


def test_aligned_ranks_on_garcia_herrera_2008_data() -> None:
    """Reference: scmamp's friedmanAlignedRanksTest on this data scaled to integers (x 5000): T = 41.728378,
    df = 4, p = 1.899027e-08. scmamp's vignette ("Statistical assessment of the differences") prints
    T = 41.691, p = 1.933e-08 for the raw decimals: the same test with a few ties split by rounding."""
    result = friedman_aligned_ranks(GH_2008)
    assert result.statistic == pytest.approx(41.728378, abs=1e-6)
    assert result.p_value == pytest.approx(1.899027e-08, rel=1e-6)
    assert result.statistic == pytest.approx(41.691, abs=0.04)


def test_aligned_ranks_ignore_direction_and_scale() -> None:
    base = friedman_aligned_ranks(GH_2010)
    flipped = friedman_aligned_ranks([[-v for v in row] for row in GH_2010])  # lower is better
    scaled = friedman_aligned_ranks([[100 * v + 7 for v in row] for row in GH_2010])  # in % and shifted
    assert flipped.statistic == pytest.approx(base.statistic)
    assert scaled.statistic == pytest.approx(base.statistic)


def test_aligned_ranks_of_identical_treatments_are_zero() -> None:
    result = friedman_aligned_ranks([[0.9, 0.9, 0.9], [0.8, 0.8, 0.8]])
    assert result.statistic == pytest.approx(0.0) and result.p_value == pytest.approx(1.0)


def test_aligned_ranks_refuse_too_little_data() -> None:
    with pytest.raises(ValueError, match="at least 2 blocks x 2 treatments"):
        friedman_aligned_ranks([[0.9, 0.8, 0.7]])
    with pytest.raises(ValueError, match="finite"):
        friedman_aligned_ranks([[0.9, math.nan], [0.8, 0.7]])


# --- the environment: printed under Table 2, never silently mixed ---


def environment(signature: str, host: str, world_size: int) -> dict:
    """An ``environment`` record as wame_dist.provenance writes it (the fields the report reads)."""
    return {
        "signature": signature,
        "machine": {"host": host},
        "launch": {"world_size": world_size, "nodes": 1, "launcher": "torch"},
    }


def write_environment_results(path: Path, signatures: list[str]) -> Path:
    lines = [
        record(
            "digits", optimizer, seed, LR[optimizer], environment=environment(sig, f"node{seed}", 2 + seed)
        )
        for optimizer in ("adam", "wame")
        for seed, sig in enumerate(signatures)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_table2_ends_with_the_environment_that_produced_it(tmp_path: Path) -> None:
    results = write_environment_results(
        tmp_path / "r.jsonl", ["wame_dist 0.1.0 @ abc; torch 2.14.1; CPU x"] * 2
    )
    write_report(results, tmp_path / "out")
    table = (tmp_path / "out" / "table2.md").read_text()
    section = table[table.index("## Environment") :]
    assert "**wame_dist 0.1.0 @ abc; torch 2.14.1; CPU x**: 4 run(s) (Adam 2, WAME 2)" in section
    assert "hosts: node0, node1" in section
    assert "jobs: 2 rank(s) on 1 node(s), torch; 3 rank(s) on 1 node(s), torch" in section


def test_runs_from_two_environments_are_refused_unless_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = write_environment_results(tmp_path / "r.jsonl", ["code A; CPU x", "code B; CPU x"])
    with pytest.raises(SystemExit) as exit_info:
        main([str(results), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mix runs from 2 environments" in err and "2 run(s) from [code A; CPU x]" in err
    assert "--mixed-environments" in err
    assert not (tmp_path / "out" / "table2.md").exists()

    assert main([str(results), "--out", str(tmp_path / "out"), "--mixed-environments"]) == 0
    table = (tmp_path / "out" / "table2.md").read_text()
    assert "**code A; CPU x**: 2 run(s)" in table and "**code B; CPU x**: 2 run(s)" in table


def test_records_without_an_environment_are_reported_as_not_recorded(tmp_path: Path) -> None:
    write_report(write_results(tmp_path / "r.jsonl"), tmp_path / "out")
    assert "not recorded" in (tmp_path / "out" / "table2.md").read_text()


def test_paired_differences_by_hand(tmp_path: Path) -> None:
    """WAME minus SGD on the synthetic digits runs: accuracy differences 0.05, 0.05, 0.05 (sd 0: the
    interval is the point), best-epoch differences -4, -3, 1: mean -2, sd sqrt(7), half-width
    t(0.975, 2) * sqrt(7) / sqrt(3) = 4.3026527 * 1.5275252 = 6.5724106; Wilcoxon on [-4, -3, 1] (ranks
    3, 2, 1; W+ = 1): exact two-sided p = 2 * 2/8 = 0.5."""
    write_report(write_results(tmp_path / "results.jsonl"), tmp_path / "report")
    pairs = json.loads((tmp_path / "report" / "paired.json").read_text())
    digits = next(entry for entry in pairs if entry["dataset"] == "digits")
    assert digits["baseline"] == "sgd" and set(digits["pairs"]) == {"rmsprop", "adam", "wame"}
    accuracy = digits["pairs"]["wame"]["test_acc_at_best"]
    assert accuracy["mean"] == pytest.approx(0.05) and accuracy["sd"] == pytest.approx(0, abs=1e-12)
    assert accuracy["low"] == pytest.approx(0.05) and accuracy["high"] == pytest.approx(0.05)
    epoch = digits["pairs"]["wame"]["best_epoch"]
    assert epoch["mean"] == pytest.approx(-2) and epoch["sd"] == pytest.approx(math.sqrt(7))
    assert epoch["low"] == pytest.approx(-2 - 6.5724106, abs=1e-6)
    assert epoch["high"] == pytest.approx(-2 + 6.5724106, abs=1e-6)
    assert epoch["wilcoxon_p"] == pytest.approx(0.5)
    assert all(entry["dataset"] != "mnist" for entry in pairs)  # one optimizer: no pairs
    markdown = (tmp_path / "report" / "paired.md").read_text()
    assert "| WAME | test accuracy at best epoch | +5.000 | [+5.000, +5.000] |" in markdown
