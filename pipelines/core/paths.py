"""Where the stages read and write, relative to the repository root: the paths dvc.yaml names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    """The pipeline's folders under `root`; the defaults are dvc.yaml's."""

    root: Path = Path(".")

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def tokenized(self) -> Path:
        return self.root / "data" / "tokenized"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def hypotheses(self) -> Path:
        return self.root / "hypotheses"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


PATHS = ProjectPaths()
