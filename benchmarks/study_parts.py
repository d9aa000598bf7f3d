"""Run the study's parts side by side, one process each, then write one ``study.md`` from them:
for a lent GPU machine (no MLflow there) where the parts in turn would not fit one call.

    python -m benchmarks.study_parts run --params profiles/gpu.yaml --parts path positional heads \\
        --runs benchmarks/results/2026-11-30_h200_comparison/runs.json --out results/study
    python -m benchmarks.study_parts merge --out results/study --report results/study/study.md

``run`` starts one ``python -m benchmarks.study_parts part`` process per part at once (they share
the device: the parts measured here are accuracies, BLEU and attention statistics, not timings,
so sharing changes none of them; part ``cost`` measures time and must run alone). Each process
calls the study stage's own ``run_study`` with ``study.parts`` set to its part and pickles the
part's result into ``<out>/<part>.pkl``; its figures go to ``<out>/figures`` and its log to
``<out>/<part>.log``. ``--runs`` takes the per-run outputs a comparison left (``runs.json`` as
``benchmarks/results/*_comparison/`` hold them: each run's ``test`` scores and ``history``) and
lays them out as ``metrics/<run>.json`` and ``logs/<run>/history.csv`` for the parts that read
them (``path``'s BLEU per source length, ``efficiency``). ``merge`` writes the report from the
pickles with the stage's own ``study_markdown``, the parts in the study's order.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from pipelines.core.atomic import atomic_write_text
from pipelines.core.errors import setup_logging
from pipelines.core.params import load_params
from pipelines.core.paths import PATHS, ProjectPaths
from pipelines.core.study_params import STUDY_PARTS
from pipelines.study.report import study_markdown


def layout_runs(runs_json: Path, root: Path) -> ProjectPaths:
    """A project root whose data is the working directory's and whose ``metrics/`` and ``logs/``
    hold the runs recorded in `runs_json`."""
    paths = ProjectPaths(root)
    paths.prepared.parent.mkdir(parents=True, exist_ok=True)
    for folder in (PATHS.prepared, PATHS.tokenized):
        (root / "data" / folder.name).symlink_to(folder.resolve())
    for name, run in json.loads(runs_json.read_text(encoding="utf-8"))["runs"].items():
        paths.metrics.mkdir(parents=True, exist_ok=True)
        (paths.metrics / f"{name}.json").write_text(json.dumps(run["test"]), encoding="utf-8")
        (paths.logs / name).mkdir(parents=True, exist_ok=True)
        (paths.logs / name / "history.csv").write_text(run["history"], encoding="utf-8")
    return paths


def run_part(part: str, params_file: Path, out: Path, runs_json: Path | None) -> None:
    """One part, as the study stage runs it; its result pickled to ``<out>/<part>.pkl``."""
    from pipelines.study.runner import run_study, setup_line

    setup_logging()
    params = load_params(params_file)
    params = replace(params, study=replace(params.study, parts=[part]))
    with tempfile.TemporaryDirectory(prefix="study-root-") as root:
        paths = layout_runs(runs_json, Path(root)) if runs_json else PATHS
        figures = out / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        results = run_study(params, paths, figures)
    (out / f"{part}.pkl").write_bytes(pickle.dumps(results))
    (out / "setup.txt").write_text(setup_line(params), encoding="utf-8")


def run_side_by_side(parts: list[str], params_file: Path, out: Path, runs: Path | None) -> int:
    """Every part in its own process at once; the number of parts that failed."""
    out.mkdir(parents=True, exist_ok=True)
    children = []
    for part in parts:
        command = [sys.executable, "-m", "benchmarks.study_parts", "part", part]
        command += ["--params", str(params_file), "--out", str(out)]
        command += ["--runs", str(runs)] if runs else []
        log = (out / f"{part}.log").open("w")
        children.append((part, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
    failed = 0
    for part, child in children:
        code = child.wait()
        print(f"part {part}: exit {code} (log {out / f'{part}.log'})")
        failed += code != 0
    return failed


def merge(out: Path, report: Path) -> None:
    """One report from the pickled parts in `out`, in the study's order of parts."""
    results = []
    for part in STUDY_PARTS:
        pickled = out / f"{part}.pkl"
        if pickled.exists():
            results += pickle.loads(pickled.read_bytes())
    if not results:
        raise SystemExit(f"error: no <part>.pkl in {out}")
    parts = ", ".join(result.name for result in results)
    setup = (out / "setup.txt").read_text(encoding="utf-8").split(" parts:")[0]
    atomic_write_text(report, study_markdown(results, f"{setup} parts: {parts}."))
    print(f"wrote {report} ({parts})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study_parts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the parts side by side, one process each")
    run.add_argument("--parts", nargs="+", choices=STUDY_PARTS, required=True)
    one = commands.add_parser("part", help="one part (what `run` starts per part)")
    one.add_argument("part", choices=STUDY_PARTS)
    for sub in (run, one):
        sub.add_argument("--params", type=Path, default=Path("params.yaml"))
        sub.add_argument("--out", type=Path, required=True)
        sub.add_argument("--runs", type=Path, help="a comparison's runs.json (metrics, histories)")
    joined = commands.add_parser("merge", help="one study.md from the pickled parts")
    joined.add_argument("--out", type=Path, required=True)
    joined.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        sys.exit(run_side_by_side(args.parts, args.params, args.out, args.runs))
    if args.command == "part":
        run_part(args.part, args.params, args.out, args.runs)
    else:
        merge(args.out, args.report)


if __name__ == "__main__":
    main()
