"""The architecture comparison: one row per architecture over its seeds, as
``reports/comparison.{md,csv}``, the validation curves' data and two PNG plots.

Per test split: BLEU mean ± standard deviation over seeds, chrF, and the paired-bootstrap 95%
confidence interval of the BLEU difference to the selected (best on validation) architecture,
pooled over seeds (seed i of each architecture paired with seed i of the best). Besides: the
validation BLEU every choice is made on, size, the budget each run used, time and throughput.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.atomic import atomic_write_text
from pipelines.core.errors import PipelineError
from pipelines.core.params import ModelRun, Params
from pipelines.core.paths import ProjectPaths
from pipelines.core.scoring import bleu_difference
from pipelines.data.prepared import read_references
from pipelines.inference.settings import SELECTION_KEY
from pipelines.reports.plots import bleu_bars, validation_curves
from pipelines.reports.selection import Selection, read_training_summary, select

REPORT_FILES = (
    "comparison.md",
    "comparison.csv",
    "validation_bleu.csv",
    "validation_curves.png",
    "bleu_per_test_set.png",
)
BOOTSTRAP_SAMPLES = 1000


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


@dataclass
class RunResult:
    """One training's outputs: test metrics, training summary, validation history."""

    run: ModelRun
    metrics: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, float]]


def load_results(params: Params, paths: ProjectPaths) -> dict[str, list[RunResult]]:
    """Every training's results, by architecture; a missing file names the stage to run."""
    results: dict[str, list[RunResult]] = {}
    for run in params.runs():
        metrics_file = paths.metrics / f"{run.name}.json"
        if not metrics_file.exists():
            raise PipelineError(f"{metrics_file}: missing; run evaluate@{run.name} first")
        result = RunResult(
            run,
            json.loads(metrics_file.read_text()),
            read_training_summary(paths, run),
            read_history(paths.logs / run.name / "history.csv"),
        )
        results.setdefault(run.arch, []).append(result)
    return results


def seconds_to_fraction(history: list[dict[str, float]], fraction: float = 0.95) -> float | None:
    """Training seconds until validation BLEU first reached `fraction` of its best."""
    scored = [row for row in history if "val_bleu" in row]
    if not scored:
        return None
    target = fraction * max(row["val_bleu"] for row in scored)
    return next(row["train_seconds"] for row in scored if row["val_bleu"] >= target)


def mean(values: list[float | None], digits: int = 2) -> float | str:
    present = [value for value in values if value is not None]
    return round(statistics.fmean(present), digits) if present else ""


def sd(values: list[float]) -> float | str:
    """Sample standard deviation; empty with one seed."""
    return round(statistics.stdev(values), 2) if len(values) > 1 else ""


def pooled_hypotheses(paths: ProjectPaths, results: list[RunResult], split: str) -> list[str]:
    """The seeds' hypotheses of `split`, concatenated in seed order."""
    lines: list[str] = []
    for result in results:
        path = paths.hypotheses / result.run.name / f"{split}.txt"
        if not path.exists():
            raise PipelineError(f"{path}: missing; run evaluate@{result.run.name} first")
        lines += path.read_text(encoding="utf-8").splitlines()
    return lines


def differences(
    params: Params, paths: ProjectPaths, results: dict[str, list[RunResult]], best: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per architecture and test split: BLEU difference to `best` with its 95% CI (pooled)."""
    out: dict[str, dict[str, dict[str, Any]]] = {arch: {} for arch in results}
    for split in params.data.test_splits:
        references = read_references(paths.prepared, split) * len(params.seeds)
        baseline = pooled_hypotheses(paths, results[best], split)
        for arch, arch_results in results.items():
            if arch == best:
                continue
            candidate = pooled_hypotheses(paths, arch_results, split)
            out[arch][split] = bleu_difference(
                baseline, candidate, references, params.data.tgt_lang, BOOTSTRAP_SAMPLES
            )
    return out


def chosen_length_penalty(params: Params, result: RunResult) -> float:
    """The length penalty a run's test sets were decoded with (chosen on validation, or given)."""
    selection = result.metrics.get(SELECTION_KEY)
    return selection["length_penalty"] if selection else params.evaluate.length_penalty


def table_rows(
    params: Params,
    paths: ProjectPaths,
    results: dict[str, list[RunResult]],
    selection: Selection,
) -> list[dict[str, Any]]:
    """One row per architecture (seed means and spreads), in params order."""
    diffs = differences(params, paths, results, selection.arch)
    rows = []
    for arch, arch_results in results.items():
        summaries = [result.summary for result in arch_results]
        row: dict[str, Any] = {"architecture": arch, "seeds": len(arch_results)}
        for split in params.data.test_splits:
            bleu = [result.metrics[split]["bleu"] for result in arch_results]
            row[f"{split}_bleu"] = mean(bleu)
            row[f"{split}_bleu_sd"] = sd(bleu)
            row[f"{split}_chrf"] = mean([result.metrics[split]["chrf"] for result in arch_results])
            diff = diffs[arch].get(split, {})
            for key in ("difference", "ci_low", "ci_high"):
                row[f"{split}_{key}"] = diff.get(key, "")
        unit = params.budget.unit
        row.update(
            val_bleu=mean([summary["val_bleu"] for summary in summaries]),
            val_bleu_sd=sd([summary["val_bleu"] for summary in summaries]),
            parameters=summaries[0]["num_parameters"],
            budget=params.budget.describe(),
            budget_used=mean([summary[f"used_{unit}"] for summary in summaries]),
            epochs_used=mean([summary["used_epochs"] for summary in summaries]),
            train_seconds=mean([summary["train_seconds"] for summary in summaries], 1),
            tokens_per_sec=mean([summary["tokens_per_sec"] for summary in summaries], 0),
            seconds_to_95=mean([seconds_to_fraction(result.history) for result in arch_results], 1),
            length_penalty=" ".join(str(chosen_length_penalty(params, r)) for r in arch_results),
            selected=arch == selection.arch,
            run_ids=" ".join(str(summary["run_id"] or "") for summary in summaries).strip(),
        )
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _with_sd(value: Any, spread: Any) -> str:
    return f"{value:.2f} ± {spread:.2f}" if spread != "" else f"{value:.2f}"


def _interval(row: dict[str, Any], split: str) -> str:
    if row["selected"]:
        return "(best)"
    low, high = row[f"{split}_ci_low"], row[f"{split}_ci_high"]
    return f"{row[f'{split}_difference']:+.2f} [{low:+.2f}, {high:+.2f}]"


def length_penalty_line(params: Params, rows: list[dict[str, Any]]) -> str:
    """How the length penalty was set, and per architecture the value each seed decoded with."""
    candidates = params.evaluate.length_penalties()
    if len(candidates) == 1:
        return f"Length penalty {candidates[0]} for every run (`evaluate.length_penalty`)."
    chosen = "; ".join(
        f"{row['architecture']} {row['length_penalty'].replace(' ', ', ')}" for row in rows
    )
    return (
        f"Length penalty: chosen per run among {', '.join(map(str, candidates))} by beam-search "
        f"BLEU on {params.data.validation_split} (`evaluate.length_penalty_grid`): {chosen}."
    )


def to_markdown(
    params: Params, rows: list[dict[str, Any]], selection: Selection, signature: str
) -> str:
    """The table, and below it how every number was made and which splits decided what."""
    promotion = params.promotion_split
    marks = {split: " †" if split == promotion else "" for split in params.data.test_splits}
    header = ["architecture", "seeds"]
    for split in params.data.test_splits:
        header += [f"{split}{marks[split]} BLEU", "chrF", f"Δ BLEU vs best (95% CI){marks[split]}"]
    unit = params.budget.unit
    header += [
        "validation BLEU",
        "params",
        f"budget used ({unit})",
        "train s",
        "tokens/s",
        "s to 95% val BLEU",
    ]
    lines = [
        "# Architecture comparison",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        name = f"**{row['architecture']}**" if row["selected"] else row["architecture"]
        cells = [name, str(row["seeds"])]
        for split in params.data.test_splits:
            cells += [
                _with_sd(row[f"{split}_bleu"], row[f"{split}_bleu_sd"]),
                f"{row[f'{split}_chrf']:.2f}",
                _interval(row, split),
            ]
        cells += [
            _with_sd(row["val_bleu"], row["val_bleu_sd"]),
            f"{row['parameters'] / 1e6:.2f} M",
            f"{row['budget_used']:g} of {row['budget']}",
            str(row["train_seconds"]),
            f"{row['tokens_per_sec']:,.0f}" if row["tokens_per_sec"] != "" else "",
            str(row["seconds_to_95"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = params.seeds
    pooled = (
        f"pooled over the {len(seeds)} seeds (seed i of each architecture paired with seed i of "
        "the best)"
        if len(seeds) > 1
        else f"on the one seed's outputs (seed {seeds[0]})"
    )
    reporting = ", ".join(params.reporting_splits)
    decided = (
        f"`nmt retrain` promotes on {promotion} (marked †), a test split: it is used for "
        "decisions, not only reported."
        if promotion in params.data.test_splits
        else f"`nmt retrain` promotes on {promotion} too."
    )
    lines += [
        "",
        f"BLEU: sacreBLEU `{signature}`, beam search on detokenized output; mean ± standard "
        f"deviation over seeds {', '.join(map(str, seeds))}.",
        f"Budget: {params.budget.describe()} for every architecture (`budget` in params.yaml); "
        "early stopping on validation may end a run sooner. Budget used: the mean over seeds.",
        f"Δ BLEU vs best: BLEU minus the selected architecture's, with the 95% paired-bootstrap "
        f"interval ({BOOTSTRAP_SAMPLES} samples, sacreBLEU's resampling) {pooled}.",
        length_penalty_line(params, rows),
        f"Decisions read {params.data.validation_split} only: checkpoints, early stopping and "
        f"averaging, the length penalty, and the selected architecture (**bold**: the highest "
        f"mean validation BLEU, greedy; registered: {selection.run.name}, its best seed on "
        f"validation). {decided} "
        f"Reported only, never used for a decision: {reporting}.",
        "",
        "![validation curves](validation_curves.png)",
        "![BLEU per test set](bleu_per_test_set.png)",
        "",
    ]
    return "\n".join(lines)


def mean_histories(results: dict[str, list[RunResult]]) -> dict[str, list[dict[str, float]]]:
    """Per architecture, the validation curve averaged over seeds, row by row."""
    curves = {}
    for arch, arch_results in results.items():
        length = max(len(result.history) for result in arch_results)
        rows = []
        for index in range(length):
            present = [r.history[index] for r in arch_results if index < len(r.history)]
            keys = dict.fromkeys(key for row in present for key in row)
            rows.append(
                {key: statistics.fmean(row[key] for row in present if key in row) for key in keys}
            )
        curves[arch] = rows
    return curves


def validation_bleu_table(histories: dict[str, list[dict[str, float]]]) -> str:
    """Validation BLEU per epoch (1-based), one column per architecture (the mean over seeds):
    the data of dvc.yaml's top-level plot that overlays every architecture's curve."""
    by_epoch: dict[int, dict[str, float]] = {}
    for arch, rows in histories.items():
        for row in rows:
            if "val_bleu" in row:
                by_epoch.setdefault(int(row["epoch"]) + 1, {})[arch] = round(row["val_bleu"], 4)
    lines = [",".join(["epoch", *histories])]
    for epoch in sorted(by_epoch):
        values = [str(by_epoch[epoch].get(arch, "")) for arch in histories]
        lines.append(",".join([str(epoch), *values]))
    return "\n".join(lines) + "\n"


def compare(params: Params, paths: ProjectPaths) -> tuple[list[dict[str, Any]], Selection]:
    """Write the table and the plots under ``paths.reports``; returns the rows and the
    selection (made on validation only)."""
    results = load_results(params, paths)
    selection = select(params, paths)
    rows = table_rows(params, paths, results, selection)
    first_split = params.data.test_splits[0]
    signature = next(iter(results.values()))[0].metrics[first_split]["signature"]
    reports = paths.reports
    reports.mkdir(parents=True, exist_ok=True)
    atomic_write_text(reports / "comparison.csv", to_csv(rows))
    atomic_write_text(reports / "comparison.md", to_markdown(params, rows, selection, signature))
    histories = mean_histories(results)
    atomic_write_text(reports / "validation_bleu.csv", validation_bleu_table(histories))
    validation_curves(histories, reports / "validation_curves.png")
    scores = {
        row["architecture"]: {s: row[f"{s}_bleu"] for s in params.data.test_splits} for row in rows
    }
    bleu_bars(scores, reports / "bleu_per_test_set.png")
    return rows, selection
