"""Translating a stream line by line: lines read lazily (a pipe or a terminal works), in batches,
each batch translated, written in input order and flushed; empty lines stay empty; n-best lists."""

from __future__ import annotations

import itertools
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings
from pipelines.inference.translator import TextTranslator, Translation


def open_input(source: str) -> tuple[BinaryIO, str]:
    """The binary stream of a file or of standard input ('-'), and its name for messages."""
    if source == "-":
        return sys.stdin.buffer, "<stdin>"
    try:
        return open(source, "rb"), source  # closed by cmd_translate
    except FileNotFoundError as err:
        raise PipelineError(f"{source}: no such file") from err
    except IsADirectoryError as err:
        raise PipelineError(f"{source}: is a directory, not a file of sentences") from err
    except OSError as err:
        raise PipelineError(f"{source}: cannot be read ({err.strerror})") from err


def iter_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """The lines of `stream`, decoded one at a time as they arrive; undecodable bytes are an
    error naming ``<name>:<line>``.

    Lines end at ``\n`` (or ``\r\n``) only, so output line N is always the translation of input
    line N, even when a sentence holds a Unicode line separator. A byte order mark before the
    first line is dropped.
    """
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise PipelineError(f"{name}:{number}: invalid UTF-8") from err
        if number == 1:
            line = line.removeprefix("\ufeff")
        yield line.removesuffix("\n").removesuffix("\r")


def count_lines(stream: BinaryIO) -> int | None:
    """The number of lines left in `stream` when it is a regular file (read with pread, so the
    stream's position does not move), else None: a pipe or terminal is read once only."""
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        offset = os.lseek(fd, 0, os.SEEK_CUR)
    except (AttributeError, OSError, ValueError):
        return None
    lines, last = 0, b"\n"
    while chunk := os.pread(fd, 1 << 20, offset):
        lines += chunk.count(b"\n")
        offset += len(chunk)
        last = chunk[-1:]
    return lines + (last != b"\n")


def batched(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of `size` lines (the last one shorter), each as soon as it is full."""
    iterator = iter(lines)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def format_n_best(first_line: int, n_best: list[list[Translation]]) -> str:
    """``<line number>\t<score>\t<hypothesis>`` lines, the best hypotheses of each input line."""
    return "".join(
        f"{number}\t{t.score:.4f}\t{t.text}\n"
        for number, translations in enumerate(n_best, start=first_line)
        for t in translations
    )


class Progress:
    """A progress bar over input lines on stderr, only when stdout is not a terminal: from the
    start for a file of at least `threshold` lines (counted first), else (a pipe, of unknown
    length) from the moment `threshold` lines have been translated, without a total."""

    def __init__(self, total: int | None, threshold: int) -> None:
        self.enabled = not sys.stdout.isatty()
        self.total, self.threshold = total, threshold
        self.done = 0
        self.bar = None
        if self.enabled and total is not None and total >= threshold:
            self.bar = self._open(0)

    def _open(self, initial: int):
        from tqdm.auto import tqdm

        return tqdm(total=self.total, initial=initial, desc="translating", unit="line")

    def update(self, lines: int) -> None:
        self.done += lines
        if self.bar is not None:
            self.bar.update(lines)
        elif self.enabled and self.total is None and self.done >= self.threshold:
            self.bar = self._open(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_translations(
    translator: TextTranslator,
    settings: DecodingSettings,
    lines: Iterable[str],
    batch_size: int,
    n_best: int,
    progress: Progress,
) -> None:
    """Translate and write `lines` one batch at a time, flushing stdout after each batch: the
    translations, or with `n_best` > 1 the :func:`format_n_best` lines."""
    out = getattr(sys.stdout, "buffer", None)  # UTF-8 out, as in, whatever the locale
    number = 1
    # batch_size <= settings.batch_size: each batch of lines is one batch of the model.
    for batch in batched(lines, batch_size):
        if n_best == 1:
            text = "".join(f"{t}\n" for t in translator.translate(batch, settings))
        else:
            text = format_n_best(number, translator.translate_n_best(batch, n_best, settings))
        if out is None:
            sys.stdout.write(text)
        else:
            out.write(text.encode("utf-8"))
        sys.stdout.flush()
        number += len(batch)
        progress.update(len(batch))
