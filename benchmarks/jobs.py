"""What `bench throughput` measures: jobs (a model, how it runs) and their order."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

MODES = ("eager", "compiled", "graphed", "compiled+graphed")
JOB_FORMAT = f"ARCH,ours|marian,{'|'.join(MODES)},copies|casts"


@dataclass(frozen=True)
class Job:
    """One model to measure: our `arch` or Marian mirroring it, eager or compiled, and (ours)
    with CUDA graphs of its loss (`graphed`, compiled or not); our eager model with bf16 weight
    copies kept between steps (`copies`) or autocast's per-call casts."""

    arch: str
    kind: str  # "ours" | "marian"
    compiled: bool = False
    copies: bool = False
    graphed: bool = False

    def spec(self) -> str:
        modes = (("compiled", self.compiled), ("graphed", self.graphed))
        mode = "+".join(name for name, on in modes if on)
        return f"{self.arch},{self.kind},{mode or 'eager'},{'copies' if self.copies else 'casts'}"

    @classmethod
    def parse(cls, spec: str) -> Job:
        parts = spec.split(",")
        choices = (("ours", "marian"), MODES, ("copies", "casts"))
        if len(parts) != 4 or any(p not in c for p, c in zip(parts[1:], choices, strict=True)):
            raise ValueError(f"bad --job {spec!r}: {JOB_FORMAT}")
        arch, kind, mode, weights = parts
        return cls(arch, kind, "compiled" in mode, weights == "copies", "graphed" in mode)


def planned_jobs(
    args: argparse.Namespace, archs: list[str], copies: list[bool], graphs: list[bool]
) -> list[tuple[int, Job]]:
    """(round, job) in measuring order, round by round: ours in each requested variant, ours
    compiled (with CUDA graphs if they are on), then Marian; so that a drift of the machine shows
    as a spread between rounds. Marian compiled comes last, once (its compilation is slow)."""
    per_round = []
    for arch in archs:
        per_round += [Job(arch, "ours", graphed=True)] if True in graphs else []
        per_round += [Job(arch, "ours", copies=c) for c in copies] if False in graphs else []
    graphed = True in graphs
    per_round += [Job(arch, "ours", compiled=True, graphed=graphed) for arch in args.compile or []]
    if args.marian:
        per_round.append(Job(args.marian, "marian"))
    jobs = [(round_, job) for round_ in range(args.rounds) for job in per_round]
    if args.marian and args.compile_marian:
        jobs.append((0, Job(args.marian, "marian", compiled=True)))
    return jobs
