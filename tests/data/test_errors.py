"""`run_main`: user errors become one `error:` line and exit status 2; bugs keep their traceback."""

from __future__ import annotations

import pytest

from models.config import ConfigError
from pipelines.core.errors import EXIT_USER_ERROR, PipelineError, run_main


@pytest.mark.parametrize(
    "error", [PipelineError("data/x.jsonl:3: invalid UTF-8"), ConfigError("k")]
)
def test_user_errors_exit_2_with_one_line(error: Exception, capsys) -> None:
    @run_main
    def main() -> None:
        raise error

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == EXIT_USER_ERROR == 2
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert capsys.readouterr().err == f"error: {error}\n"


def test_other_errors_propagate_and_results_pass_through() -> None:
    @run_main
    def broken() -> None:
        raise KeyError("bug")

    @run_main
    def fine(value: int) -> int:
        return value + 1

    with pytest.raises(KeyError):
        broken()
    assert fine(1) == 2
    assert fine.__name__ == "fine"
