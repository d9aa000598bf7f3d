"""Text normalization, the same for training data and for text to translate: Unicode
normalization, control characters removed (whitespace controls become spaces), runs of whitespace
collapsed to one space and the ends stripped."""

from __future__ import annotations

import re
import unicodedata

# Zero-width characters that are invisible formatting noise in these corpora; other format
# characters (ZWJ/ZWNJ) carry meaning in some scripts and are kept.
_INVISIBLE = {"\ufeff", "\u200b", "\u2060"}
_WHITESPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85"}


def strip_control(text: str) -> str:
    """Remove control characters; whitespace controls (tab, newline, ...) become spaces."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char in _WHITESPACE_CONTROLS:
            out.append(" ")
        elif unicodedata.category(char) == "Cc" or char in _INVISIBLE:
            continue
        else:
            out.append(char)
    return "".join(out)


_SPACES = re.compile(r"\s+")


def normalize_text(text: str, unicode_form: str) -> tuple[str, bool]:
    """Normalize one sentence; also say whether control characters were removed."""
    if unicode_form != "none":
        text = unicodedata.normalize(unicode_form, text)
    stripped = strip_control(text)
    had_control = stripped != text and any(
        c not in _WHITESPACE_CONTROLS and (unicodedata.category(c) == "Cc" or c in _INVISIBLE)
        for c in text
    )
    return _SPACES.sub(" ", stripped).strip(), had_control
