"""reports/study.md: the seed's claims with a measured column and a verdict each, then one
section per part; every number and verdict in it comes from the parts' results."""

from __future__ import annotations

from pipelines.core.study_params import STUDY_PARTS
from pipelines.study import cost, efficiency, heads, path, positional
from pipelines.study.claims import Claim, not_measured
from pipelines.study.part import PartResult, markdown_table

# Each part's claims by topic, in the table's order: the rows of the parts that did not run.
PART_CLAIMS = {
    "cost": cost.SEED_CLAIMS,
    "path": path.SEED_CLAIMS,
    "positional": positional.SEED_CLAIMS,
    "heads": heads.SEED_CLAIMS,
    "efficiency": efficiency.SEED_CLAIMS,
}


def all_claims(results: list[PartResult]) -> list[Claim]:
    """Every claim of every part, measured or marked as not run, in the parts' order."""
    ran = {result.name: result for result in results}
    claims = []
    for part in STUDY_PARTS:
        if part in ran:
            claims += ran[part].claims
        else:
            claims += [
                not_measured(topic, seed, f"part `{part}` off")
                for topic, seed in PART_CLAIMS[part].items()
            ]
    return claims


def study_markdown(results: list[PartResult], setup: str) -> str:
    """The whole report; `setup` says where and how it was measured."""
    claims = all_claims(results)
    lines = [
        "# The seed's claims, measured",
        "",
        f"Written by `python -m pipelines.stages.study` (DVC stage `study`). {setup}",
        "Every measured value and verdict below is computed from this run's measurements by "
        "the rule listed under the table.",
        "",
        *markdown_table(
            ["claim", "the seed says", "measured", "verdict"],
            [[c.topic, c.seed, c.measured, f"**{c.verdict}**"] for c in claims],
        ),
        "",
        "Rules:",
        "",
        *[f"- {c.topic}: {c.rule}." for c in claims if c.rule],
    ]
    for result in results:  # numbered as in study.parts' full list, whichever ran
        number = STUDY_PARTS.index(result.name) + 1
        lines += ["", f"## {number}. {result.title}", "", *result.lines]
    return "\n".join(lines) + "\n"
