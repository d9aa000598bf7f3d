"""`train.val_batch_tokens`: the validation loader's token budget (the training loader keeps
`batch_tokens`), each validation example once in split order; 0 means `batch_tokens`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from models.config import ConfigError, from_dict
from models.vocab import PAD_ID
from pipelines.core.params import TrainParams
from pipelines.data.tokenized import TokenizedSplit, save_npz
from pipelines.training.datamodule import TranslationDataModule


@pytest.fixture
def tokenized(tmp_path):
    rng = np.random.default_rng(3)
    for split, count in (("train", 300), ("validation", 200)):
        src = [rng.integers(4, 50, size=rng.integers(2, 30)).tolist() for _ in range(count)]
        tgt = [rng.integers(4, 50, size=rng.integers(2, 30)).tolist() for _ in range(count)]
        save_npz(tmp_path / f"{split}.npz", TokenizedSplit.from_ids(src, tgt).arrays())
    return tmp_path


def loaders(tokenized, val_batch_tokens: int):
    data = TranslationDataModule(
        tokenized, "train", "validation", batch_tokens=256, seed=1,
        val_batch_tokens=val_batch_tokens,
    )  # fmt: skip
    data.trainer = SimpleNamespace(world_size=1, global_rank=0)
    return list(data.train_dataloader()), list(data.val_dataloader())


def padded_tokens(batch) -> int:
    return max(batch["src"].numel(), batch["tgt_in"].numel())


def test_validation_batches_take_their_own_budget_and_cover_the_split_once(tokenized):
    train_default, val_default = loaders(tokenized, 0)
    train, val = loaders(tokenized, 4096)
    assert [b["src"].shape for b in train] == [b["src"].shape for b in train_default]
    assert len(val) < len(val_default)
    assert all(padded_tokens(b) <= 4096 for b in val)
    assert max(padded_tokens(b) for b in val) > 256
    assert all(padded_tokens(b) <= 256 for b in val_default)
    for batches in (val, val_default):
        indices = [i for b in batches for i in b["index"].tolist()]
        assert sorted(indices) == list(range(200))
    # The same examples, whatever the batches: tokens per example agree.
    tokens = {
        i: int((src != PAD_ID).sum())
        for b in val for i, src in zip(b["index"].tolist(), b["src"], strict=True)
    }  # fmt: skip
    tokens_default = {
        i: int((src != PAD_ID).sum())
        for b in val_default for i, src in zip(b["index"].tolist(), b["src"], strict=True)
    }  # fmt: skip
    assert tokens == tokens_default


def test_zero_means_the_training_budget_and_negative_is_refused():
    assert TrainParams(batch_tokens=512).validation_batch_tokens() == 512
    assert TrainParams(batch_tokens=512, val_batch_tokens=2048).validation_batch_tokens() == 2048
    with pytest.raises(ConfigError, match=r"train\.val_batch_tokens: must be >= 0"):
        from_dict(TrainParams, {"val_batch_tokens": -1}, prefix="train")
