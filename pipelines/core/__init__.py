"""Shared basics: params, user-facing errors, atomic writes, decoding primitives and scoring."""
