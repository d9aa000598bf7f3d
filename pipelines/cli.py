"""The `nmt` command: fetch a corpus, translate with a model, serve it, open the MLflow UI, retrain.

The pipeline itself runs with `dvc repro`; its stages are `python -m pipelines.stages.<stage>`.
Each subcommand is a module of :mod:`pipelines.commands`.
"""

from __future__ import annotations

import argparse

from pipelines.commands import export, fetch_corpus, retrain, serve, translate, ui
from pipelines.core.errors import run_main, setup_logging

PACKAGE = "nmt-pipeline"
COMMANDS = (translate, export, ui, serve, fetch_corpus, retrain)  # in the order --help lists


def package_version() -> str:
    """The installed version of the nmt-pipeline package ("unknown" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt",
        description="Machine-translation pipeline tools. Run the pipeline itself with "
        "`dvc repro`; see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


@run_main
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging()
    args.func(args)


if __name__ == "__main__":
    main()
