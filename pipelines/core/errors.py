"""User-facing errors of the pipeline stages and the `main()` wrapper that reports them in one line.

A :class:`PipelineError` (bad data) or a :class:`~models.config.ConfigError` (bad params) is the
user's to fix: the stage prints ``error: <message>`` to stderr and exits with status 2, without a
traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from models.config import ConfigError

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])


class PipelineError(Exception):
    """Bad input data or an impossible request; the message says what and where (file:line)."""


def run_main(fn: F) -> F:
    """Decorate a stage's ``main()``: user errors become one ``error:`` line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except (PipelineError, ConfigError) as err:
            # stderr directly rather than logging: the message must appear even when the
            # stage has not configured logging (or configured it to a file).
            sys.stderr.write(f"error: {err}\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(level: int = logging.INFO) -> None:
    """The stages' logging: one line per record on stderr."""
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
