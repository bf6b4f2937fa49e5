"""`engine report`: tables from run folders beside the paper's numbers, in md, csv and latex; plots."""
import csv
import io
import sys

import pytest
from PIL import Image

from engine.cli import main
from engine.report import paper_values
from engine.results import write_json
from tests.conftest import run_main

# (dataset, fraction, backbone) -> test accuracy of seeds 0 and 1
RUNS = {
    ("cifar10", 1.0, "resnet50"): (94.0, 95.0), ("cifar10", 1.0, "convnext_tiny"): (96.0, 97.0),
    ("cifar10", 0.1, "resnet50"): (85.0, 87.0), ("cifar10", 0.1, "convnext_tiny"): (90.0, 88.0),
    ("cifar10", 0.01, "resnet50"): (60.0, 62.0), ("cifar10", 0.01, "convnext_tiny"): (70.0, 71.0),
    ("dtd", 1.0, "resnet50"): (70.0, 72.0), ("dtd", 1.0, "convnext_tiny"): (69.0, 71.0),
}


def write_runs(folder, runs, select_on="test"):
    for (dataset, fraction, backbone), accuracies in runs.items():
        for seed, accuracy in enumerate(accuracies):
            write_json(folder / backbone / dataset / f"f{fraction:g}" / f"s{seed}" / "result.json",
                       {"status": "finished", "backbone": backbone, "dataset": dataset, "fraction": fraction,
                        "seed": seed, "select_on": select_on, "test_acc": accuracy})


@pytest.fixture
def runs(tmp_path):
    write_runs(tmp_path, RUNS)
    write_json(tmp_path / "resnet50" / "dtd" / "f1" / "s9" / "config.json", {})  # unfinished: no result.json
    return tmp_path


def report(capsys, *argv):
    with pytest.raises(SystemExit) as exited:
        main(["report", *argv])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_csv_rows_hold_best_mean_rank_and_the_papers_number(runs, capsys):
    rows = list(csv.DictReader(io.StringIO(report(capsys, str(runs), "--format", "csv"))))
    assert len(rows) == len(RUNS)
    paper = paper_values()
    for row in rows:
        key = (row["dataset"], float(row["fraction"]), row["backbone"])
        accuracies = RUNS[key]
        assert float(row["best"]) == max(accuracies) and float(row["mean"]) == pytest.approx(sum(accuracies) / 2)
        assert row["seeds"] == "2"
        assert float(row["paper"]) == paper[key]
        assert float(row["difference"]) == pytest.approx(max(accuracies) - paper[key], abs=0.011)
    ranks = {(r["dataset"], r["fraction"], r["backbone"]): r["rank"] for r in rows}
    assert ranks[("dtd", "1", "resnet50")] == "1" and ranks[("dtd", "1", "convnext_tiny")] == "2"


def test_markdown_tables_group_by_domain_and_mark_the_top_three(runs, capsys, caplog):
    from engine.locks import held_alone
    from engine.results import run_lock
    text = report(capsys, str(runs))
    assert f"1 run(s) under {runs} are not finished (no result.json) and not counted (0 of them training now, the " \
           f"others stopped: rerun them to finish), e.g. {runs / 'resnet50' / 'dtd' / 'f1' / 's9'}" in caplog.text
    caplog.clear()
    with held_alone(run_lock(runs / "resnet50" / "dtd" / "f1" / "s9"), "the run folder"):  # a grid mid-way
        report(capsys, str(runs))
    assert "not counted (1 of them training now" in caplog.text
    assert "full training sets, natural" in text and "full training sets, texture" in text
    paper = paper_values()
    assert f"97.00¹ (96.50±0.71) [paper {paper[('cifar10', 1.0, 'convnext_tiny')]:.2f}" in text
    assert "by training fraction" in text and "cifar10 @0.01" in text
    table_one = text[text.index("Table 1"):]
    assert "| overall | convnext_tiny (1.5) | resnet50 (1.5) |" in table_one or \
        "| overall | resnet50 (1.5) | convnext_tiny (1.5) |" in table_one


def test_latex_and_plots(runs, capsys, tmp_path):
    latex = report(capsys, str(runs), "--format", "latex", "--plots", str(tmp_path / "plots"))
    assert latex.count("\\begin{tabular}") >= 3 and "convnext\\_tiny" in latex
    heat = Image.open(tmp_path / "plots" / "heatmap.png")
    curve = Image.open(tmp_path / "plots" / "fraction_cifar10.png")
    assert heat.format == curve.format == "PNG" and heat.size[0] > 200
    assert not (tmp_path / "plots" / "fraction_dtd.png").exists()  # one fraction only: no curve


def test_plots_without_matplotlib_say_how_to_get_it_after_the_tables(runs, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `pip install -e .` without the report extra
    result = run_main(capsys, "report", str(runs), "--plots", str(tmp_path / "plots"))
    assert result.returncode == 2 and "Table 1" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == ("engine: error: --plots needs matplotlib: pip install "
                                                       "'engine[report]'")


def test_runs_on_fractions_alone_give_no_table_one(tmp_path, capsys):
    """Table 1 ranks on full training sets, as the paper does: without one, no table of empty places."""
    write_runs(tmp_path, {("demo", 0.1, "resnet50"): (40.0,), ("demo", 0.1, "convnext_tiny"): (50.0,)})
    text = report(capsys, str(tmp_path))
    assert "demo @0.1" in text and "Table 1" not in text


def test_tied_backbones_share_their_place_and_their_rank(tmp_path, capsys):
    """Two backbones at 100 % on NEU are both first (¹), the next one is third (³), and each tied one counts
    1.5 towards the mean rank: a tie broken by name would make Table 1 favour one of them."""
    write_runs(tmp_path, {("neu", 1.0, "resnet50"): (100.0, 99.0), ("neu", 1.0, "convnext_tiny"): (99.5, 100.0),
                          ("neu", 1.0, "swin_t"): (98.0, 97.0)})
    text = report(capsys, str(tmp_path))
    assert text.count("100.00¹") == 2 and "100.00²" not in text and "98.00³" in text
    assert "convnext_tiny (1.5)" in text and "resnet50 (1.5)" in text and "swin_t (3.0)" in text
    rows = csv.DictReader(io.StringIO(report(capsys, str(tmp_path), "--format", "csv")))
    assert {row["backbone"]: row["rank"] for row in rows} == {"resnet50": "1.5", "convnext_tiny": "1.5",
                                                               "swin_t": "3"}


def test_runs_selected_on_validation_are_never_pooled_with_the_papers_and_say_so(runs, capsys, tmp_path):
    write_runs(runs / "unbiased", {("dtd", 1.0, "resnet50"): (50.0, 51.0, 52.0)}, select_on="val")
    rows = list(csv.DictReader(io.StringIO(report(capsys, str(runs), "--format", "csv"))))
    dtd = {(row["select_on"], row["seeds"], row["best"]) for row in rows
           if (row["dataset"], row["backbone"]) == ("dtd", "resnet50")}
    assert dtd == {("test", "2", "72.00"), ("val", "3", "52.00")}
    text = report(capsys, str(runs))
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    assert all(title.endswith(("; epochs selected on test", "; epochs selected on val")) for title in titles)
    assert any("texture" in title and title.endswith("on val") for title in titles)
    assert "72.00¹" in text and "52.00¹" in text  # each ranked among its own selection
    assert "selected on" not in report(capsys, str(runs / "resnet50"))  # the paper's selection alone: as before


def test_a_single_seed_shows_no_spread(tmp_path, capsys):
    """One seed has no standard deviation: "±0.00" would read as seeds that agree."""
    write_runs(tmp_path, {("dtd", 1.0, "resnet50"): (70.0,), ("dtd", 1.0, "convnext_tiny"): (69.0, 71.0)})
    text = report(capsys, str(tmp_path))
    assert "70.00² (1 seed)" in text and "71.00¹ (70.00±1.41)" in text and "±0.00" not in text


def test_the_users_own_datasets_come_after_the_papers_in_order_of_name(tmp_path, capsys):
    # resnet50 (listed before mobilenet_v3_large) ran only on "zebra": its column must still come after "apes"
    write_runs(tmp_path, {("zebra", 1.0, "resnet50"): (80.0,), ("apes", 1.0, "mobilenet_v3_large"): (60.0,),
                          ("dtd", 1.0, "resnet50"): (70.0,)})
    text = report(capsys, str(tmp_path))
    assert "| backbone | apes | zebra |" in text
    lines = list(csv.DictReader(io.StringIO(report(capsys, str(tmp_path), "--format", "csv"))))
    assert [row["dataset"] for row in lines] == ["dtd", "apes", "zebra"]


def test_a_folder_without_runs_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["report", str(tmp_path)])
    assert exited.value.code == 2 and "no finished runs" in capsys.readouterr().err
