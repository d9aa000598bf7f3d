"""PNG plots (matplotlib, offline): attention heatmaps, validation curves, BLEU bars."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from pipelines.core.atomic import atomic_path

if TYPE_CHECKING:
    from pipelines.inference.translator import AttentionExample


def save_figure(figure, path: Path) -> None:
    """Write `figure` as a PNG at `path` (atomically) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def attention_heatmap(example: AttentionExample, path: Path, title: str = "") -> None:
    """One panel per head: rows are generated target pieces, columns source pieces."""
    heads = example.attention.shape[0]
    columns = min(heads, 4)
    rows = math.ceil(heads / columns)
    src_len, tgt_len = len(example.src_pieces), len(example.tgt_pieces)
    width = max(4.0, 0.35 * src_len) * columns
    height = max(3.0, 0.3 * tgt_len) * rows
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False)
    for head in range(rows * columns):
        axis = axes[head // columns][head % columns]
        if head >= heads:
            axis.axis("off")
            continue
        weights = example.attention[head, :tgt_len, :src_len].numpy()
        axis.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
        axis.set_xticks(range(src_len), example.src_pieces, rotation=90, fontsize=7)
        axis.set_yticks(range(tgt_len), example.tgt_pieces, fontsize=7)
        axis.set_title(f"head {head}" if heads > 1 else "attention", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=9)
    save_figure(figure, path)


def validation_curves(histories: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Validation BLEU and loss against epoch, every architecture on the same axes."""
    figure, (bleu_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for arch, rows in histories.items():
        epochs = [row["epoch"] + 1 for row in rows]
        bleu_axis.plot(
            epochs, [row.get("val_bleu", math.nan) for row in rows], marker="o", label=arch
        )
        loss_axis.plot(
            epochs, [row.get("val_loss", math.nan) for row in rows], marker="o", label=arch
        )
    bleu_axis.set(xlabel="epoch", ylabel="validation BLEU (greedy)", title="Validation BLEU")
    loss_axis.set(xlabel="epoch", ylabel="validation loss (nats/token)", title="Validation loss")
    for axis in (bleu_axis, loss_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    save_figure(figure, path)


def bleu_bars(
    scores: dict[str, dict[str, float]], path: Path, title: str = "Test BLEU (beam search)"
) -> None:
    """Grouped bars: test BLEU per architecture (or model), one group per test set (or subset)."""
    archs = list(scores)
    splits = list(dict.fromkeys(split for values in scores.values() for split in values))
    width = 0.8 / max(len(archs), 1)
    figure, axis = plt.subplots(figsize=(max(6, 2.5 * len(splits)), 4))
    for i, arch in enumerate(archs):
        positions = [j + i * width for j in range(len(splits))]
        values = [scores[arch].get(split, math.nan) for split in splits]
        bars = axis.bar(positions, values, width, label=arch)
        axis.bar_label(bars, fmt="%.1f", fontsize=8)
    axis.set_xticks([j + width * (len(archs) - 1) / 2 for j in range(len(splits))], splits)
    axis.set(ylabel="sacreBLEU", title=title)
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    save_figure(figure, path)
