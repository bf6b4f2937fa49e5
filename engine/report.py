"""`engine report DIR`: the paper's tables from run folders, each number beside the paper's own.

- Tables 4-6: per-dataset top-1 at the full training set, grouped by domain; best of the seeds (the paper's
  protocol) with mean +- std beside it; the top three per dataset marked.
- Tables 7-8: the same at the training fractions below 1.
- Table 1: the top three backbones per domain and overall, by mean rank over the domain's datasets.
Formats: md, csv (one row per dataset, fraction and backbone), latex. --plots: accuracy against training
fraction per dataset (Figures 1-2) and a backbone x dataset heat map, as PNG.
Runs whose epochs were selected on a validation split (`--select-on val`) are never pooled with runs selected on
the test set (the paper's way): each selection gets tables of its own, their titles saying which.
"""
from __future__ import annotations

import csv
import io
import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from engine.errors import UserInputError
from engine.loaders import registry
from engine.locks import holder
from engine.models import list_backbones
from engine.results import CONFIG, RESULT, read_json, run_lock

log = logging.getLogger("engine")

RANK_MARKS = {1: "¹", 2: "²", 3: "³"}


@dataclass
class Entry:
    dataset: str
    fraction: float
    backbone: str
    select_on: str = "test"  # what chose the reported epoch: the test set (the paper's) or a validation split
    accuracies: list[float] = field(default_factory=list)
    paper: float | None = None
    place: int | None = None  # 1 + the backbones strictly ahead on this dataset: tied firsts are all first
    rank: float | None = None  # the mean of the positions a tie spans (two tied firsts: 1.5 each)

    @property
    def best(self) -> float:
        return max(self.accuracies)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def difference(self) -> float | None:
        return None if self.paper is None else self.best - self.paper


def paper_values() -> dict[tuple[str, float, str], float]:
    text = resources.files("engine").joinpath("paper/results.csv").read_text()
    return {(row["dataset"], float(row["fraction"]), row["backbone"]): float(row["top1"])
            for row in csv.DictReader(text.splitlines())}


def collect(folder: Path) -> list[Entry]:
    """Every finished run under `folder`, grouped by (dataset, fraction, backbone), ranked per (dataset, fraction)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder of runs")
    groups: dict[tuple[str, float, str], Entry] = {}
    for path in sorted(folder.rglob(RESULT)):
        result = read_json(path)
        if result.get("status") != "finished":
            continue
        key = (result["dataset"], float(result["fraction"]), result["backbone"], result.get("select_on", "test"))
        groups.setdefault(key, Entry(*key)).accuracies.append(float(result["test_acc"]))
    _say_unfinished(folder)
    if not groups:
        raise UserInputError(f"no finished runs (result.json) under {folder}")
    paper = paper_values()
    for entry in groups.values():
        entry.paper = paper.get((entry.dataset, entry.fraction, entry.backbone))
    by_cell: dict[tuple[str, float, str], list[Entry]] = defaultdict(list)
    for entry in groups.values():
        by_cell[(entry.dataset, entry.fraction, entry.select_on)].append(entry)
    for entries in by_cell.values():
        _rank(entries)
    return sorted(groups.values(), key=lambda e: (e.select_on != "test", _order(e.dataset), -e.fraction,
                                                  _backbone_order(e.backbone)))


def _say_unfinished(folder: Path) -> None:
    """Runs started but not finished (a grid still running, a killed run) are left out of the tables: say so, or
    a report made mid-grid reads as complete."""
    unfinished = [path.parent for path in sorted(folder.rglob(CONFIG)) if not (path.parent / RESULT).exists()]
    training = sum(holder(run_lock(run_dir)) is not None for run_dir in unfinished)
    if unfinished:
        log.warning("report: %d run(s) under %s are not finished (no %s) and not counted (%d of them training now, "
                    "the others stopped: rerun them to finish), e.g. %s", len(unfinished), folder, RESULT, training,
                    unfinished[0])


def _rank(entries: list[Entry]) -> None:
    """Rank one dataset's backbones by best accuracy, ties shared. Small test sets tie often (the paper has five
    backbones at 100 % on NEU), and breaking a tie by name would hand one backbone a better mean rank in Table 1
    than the accuracies give it; average ranks for ties are the usual rule for comparing by mean rank."""
    bests = [round(entry.best, 6) for entry in entries]  # a tie is the same count of correct test images
    for entry, best in zip(entries, bests):
        ahead, tied = sum(other > best for other in bests), bests.count(best)
        entry.place, entry.rank = ahead + 1, ahead + (tied + 1) / 2


def _order(dataset: str) -> tuple[int, str]:
    """The paper's datasets in its order, then the user's own by name (a table's columns follow this order)."""
    names = list(registry())
    return (names.index(dataset), "") if dataset in names else (len(names), dataset)


def _backbone_order(backbone: str) -> int:
    names = list_backbones()
    return names.index(backbone) if backbone in names else len(names)


def _domain(dataset: str) -> str:
    spec = registry().get(dataset)
    return spec.domain if spec else "custom"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


def _cell(entry: Entry | None) -> str:
    if entry is None:
        return ""
    # one seed has no spread: "±0.00" would claim seeds that agree
    spread = f"{entry.mean:.2f}±{entry.std:.2f}" if len(entry.accuracies) > 1 else "1 seed"
    text = f"{entry.best:.2f}{RANK_MARKS.get(entry.place, '')} ({spread})"
    if entry.paper is not None:
        text += f" [paper {entry.paper:.2f}, {entry.difference:+.2f}]"
    return text


def _wide(title: str, entries: list[Entry], column_of) -> Table:
    columns = list(dict.fromkeys(column_of(entry) for entry in entries))
    backbones = sorted({entry.backbone for entry in entries}, key=_backbone_order)
    lookup = {(entry.backbone, column_of(entry)): entry for entry in entries}
    rows = [[backbone] + [_cell(lookup.get((backbone, column))) for column in columns] for backbone in backbones]
    return Table(title, ["backbone"] + columns, rows)


def accuracy_tables(entries: list[Entry]) -> list[Table]:
    full = [entry for entry in entries if entry.fraction == 1.0]
    tables = []
    for domain in dict.fromkeys(_domain(entry.dataset) for entry in full):
        chosen = [entry for entry in full if _domain(entry.dataset) == domain]
        tables.append(_wide(f"Top-1 (%), full training sets, {domain}: best of seeds (¹²³ the top three), "
                            f"mean±std, paper and difference", chosen, lambda entry: entry.dataset))
    partial = [entry for entry in entries if entry.fraction < 1.0 or
               any(other.dataset == entry.dataset and other.fraction < 1.0 for other in entries)]
    if any(entry.fraction < 1.0 for entry in partial):
        tables.append(_wide("Top-1 (%) by training fraction (Tables 7-8)", partial,
                            lambda entry: f"{entry.dataset} @{entry.fraction:g}"))
    return tables


def top_three_tables(entries: list[Entry]) -> list[Table]:
    """Table 1: by mean rank over each domain's datasets (full training sets), and over all of them. None without
    a run on a full training set: the paper ranks on those alone, and an empty "overall" row reads as a fault."""
    full = [entry for entry in entries if entry.fraction == 1.0]
    if not full:
        return []
    rows = []
    for domain in list(dict.fromkeys(_domain(entry.dataset) for entry in full)) + ["overall"]:
        chosen = [entry for entry in full if domain == "overall" or _domain(entry.dataset) == domain]
        ranks: dict[str, list[float]] = defaultdict(list)
        for entry in chosen:
            ranks[entry.backbone].append(entry.rank)
        order = sorted(ranks, key=lambda backbone: (statistics.fmean(ranks[backbone]), _backbone_order(backbone)))
        top = [f"{backbone} ({statistics.fmean(ranks[backbone]):.1f})" for backbone in order[:3]]
        rows.append([domain] + top + [""] * (3 - len(top)))
    return [Table("Top three backbones by mean rank (Table 1)", ["domain", "first", "second", "third"], rows)]


def by_selection(entries: list[Entry]) -> dict[str, list[Entry]]:
    """The entries of each selection, test (the paper's) first."""
    groups: dict[str, list[Entry]] = {}
    for entry in entries:  # collect() sorts test-selected runs first
        groups.setdefault(entry.select_on, []).append(entry)
    return groups


def render(entries: list[Entry], fmt: str) -> str:
    if fmt == "csv":
        return _csv(entries)
    groups = by_selection(entries)
    tables = []
    for select_on, chosen in groups.items():
        # the paper's selection alone needs no word; any other, or a mix, says which each table is
        said = "" if list(groups) == ["test"] else f"; epochs selected on {select_on}"
        tables += [Table(table.title + said, table.header, table.rows)
                   for table in accuracy_tables(chosen) + top_three_tables(chosen)]
    return "\n".join({"md": _markdown, "latex": _latex}[fmt](table) for table in tables)


def _markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _latex(table: Table) -> str:
    def escape(text: str) -> str:
        for raw, safe in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#"),
                          ("±", "$\\pm$"), ("¹", "$^1$"), ("²", "$^2$"), ("³", "$^3$")):
            text = text.replace(raw, safe)
        return text

    lines = ["\\begin{table}[ht]", "\\centering", f"\\caption{{{escape(table.title)}}}",
             "\\begin{tabular}{" + "l" * len(table.header) + "}", "\\hline",
             " & ".join(escape(cell) for cell in table.header) + " \\\\", "\\hline"]
    lines += [" & ".join(escape(cell) for cell in row) + " \\\\" for row in table.rows]
    lines += ["\\hline", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _csv(entries: list[Entry]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["domain", "dataset", "fraction", "backbone", "seeds", "best", "mean", "std", "rank", "paper",
                     "difference", "select_on"])
    for entry in entries:
        writer.writerow([_domain(entry.dataset), entry.dataset, f"{entry.fraction:g}", entry.backbone,
                         len(entry.accuracies), f"{entry.best:.2f}", f"{entry.mean:.2f}", f"{entry.std:.2f}",
                         f"{entry.rank:g}", "" if entry.paper is None else f"{entry.paper:.2f}",
                         "" if entry.difference is None else f"{entry.difference:+.2f}", entry.select_on])
    return text.getvalue()


def write_plots(entries: list[Entry], folder: Path) -> list[Path]:
    """fraction_<dataset>.png for each dataset run at several fractions (Figures 1-2), and heatmap.png."""
    try:
        import matplotlib
    except ImportError:
        raise UserInputError("--plots needs matplotlib: pip install 'engine[report]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups = by_selection(entries)
    select_on = next(iter(groups))
    if len(groups) > 1:
        log.info("plots: the runs selected on %s; those selected on %s are in the tables only", select_on,
                 ", ".join(list(groups)[1:]))
    entries = groups[select_on]  # one selection: a heat map cell or a curve's point never mixes two
    written = []
    for dataset in dict.fromkeys(entry.dataset for entry in entries):
        chosen = [entry for entry in entries if entry.dataset == dataset]
        if len({entry.fraction for entry in chosen}) < 2:
            continue
        figure, axes = plt.subplots(figsize=(6, 4))
        for backbone in sorted({entry.backbone for entry in chosen}, key=_backbone_order):
            points = sorted((entry.fraction, entry.best) for entry in chosen if entry.backbone == backbone)
            axes.plot([p[0] * 100 for p in points], [p[1] for p in points], marker="o", label=backbone)
        axes.set(xscale="log", xlabel="training data used (%)", ylabel="top-1 (%)",
                 title=f"{dataset}: accuracy against training fraction")
        percents = sorted({entry.fraction * 100 for entry in chosen})
        axes.set_xticks(percents, [f"{p:g}" for p in percents])
        axes.legend(fontsize=7)
        figure.tight_layout()
        written.append(folder / f"fraction_{dataset}.png")
        figure.savefig(written[-1], dpi=120)
        plt.close(figure)
    full = [entry for entry in entries if entry.fraction == 1.0]
    if full:
        datasets = list(dict.fromkeys(entry.dataset for entry in full))
        backbones = sorted({entry.backbone for entry in full}, key=_backbone_order)
        lookup = {(entry.backbone, entry.dataset): entry.best for entry in full}
        grid = [[lookup.get((backbone, dataset), float("nan")) for dataset in datasets] for backbone in backbones]
        # at least wide enough for the title and the colour bar's label, however few datasets
        figure, axes = plt.subplots(figsize=(max(1.2 * len(datasets) + 3, 7), 0.5 * len(backbones) + 2))
        image = axes.imshow(grid, cmap="viridis", aspect="auto")
        axes.set_xticks(range(len(datasets)), datasets, rotation=45, ha="right")
        axes.set_yticks(range(len(backbones)), backbones)
        low, high = min(lookup.values()), max(lookup.values())
        for row, backbone in enumerate(backbones):
            for column, dataset in enumerate(datasets):
                if (backbone, dataset) in lookup:
                    value = lookup[(backbone, dataset)]
                    bright = (value - low) / max(high - low, 1e-9) > 0.6  # viridis turns yellow: dark text there
                    axes.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=8,
                              color="black" if bright else "white")
        figure.colorbar(image, label="top-1 (%), best of seeds")
        axes.set_title("Top-1 by backbone and dataset (full training sets)")
        figure.tight_layout()
        written.append(folder / "heatmap.png")
        figure.savefig(written[-1], dpi=120)
        plt.close(figure)
    return written
