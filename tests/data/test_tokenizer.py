"""The tokenizer stage and `Tokenizers`: round trip, determinism, special ids, the npz layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from pipelines.core.errors import PipelineError
from pipelines.core.params import TokenizerParams
from pipelines.data.prepared import read_pairs
from pipelines.data.subwords import tokenize, train_sentencepiece
from pipelines.data.tokenized import TokenizedSplit, load_split
from pipelines.data.vocab import Tokenizers

from .conftest import REPO, TEST_SPLITS, TINY_VOCAB, stage_params

SPLITS = ["train", "validation", *TEST_SPLITS]


def test_outputs(tokenized_tiny: Path) -> None:
    names = sorted(p.name for p in tokenized_tiny.iterdir())
    assert names == sorted(
        ["spm.model", "spm.vocab", "tokenizer.json"] + [f"{s}.npz" for s in SPLITS]
    )
    meta = json.loads((tokenized_tiny / "tokenizer.json").read_text())
    assert meta["joint"] is True
    assert meta["model_type"] == "bpe"
    assert meta["files"] == {"src": "spm.model", "tgt": "spm.model"}
    assert meta["src_vocab_size"] == meta["tgt_vocab_size"] == TINY_VOCAB
    assert meta["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert sorted(meta["splits"]) == sorted(SPLITS)  # sort_keys=True
    vocab_lines = (tokenized_tiny / "spm.vocab").read_text(encoding="utf-8").splitlines()
    assert len(vocab_lines) == TINY_VOCAB
    assert [line.split("\t")[0] for line in vocab_lines[:4]] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_special_token_ids(tokenized_tiny: Path) -> None:
    tokenizers = Tokenizers.load(tokenized_tiny)
    processor = tokenizers.src
    assert (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()) == (
        PAD_ID,
        UNK_ID,
        BOS_ID,
        EOS_ID,
    )
    assert [processor.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    # encode adds no BOS/EOS: the collate does
    assert all(BOS_ID not in ids and EOS_ID not in ids for ids in tokenizers.encode_src(["A dog"]))


def test_round_trip_on_fixture_sentences(prepared_tiny: Path, tokenized_tiny: Path) -> None:
    tokenizers = Tokenizers.load(tokenized_tiny)
    assert tokenizers.joint and tokenizers.src is tokenizers.tgt
    src, tgt = read_pairs(prepared_tiny, "train")
    for sentences in (src, tgt):
        assert tokenizers.decode_tgt(tokenizers.encode_tgt(sentences)) == sentences
        assert tokenizers.decode_src(tokenizers.encode_src(sentences)) == sentences
    # unseen splits: every sentence without an unknown character round-trips too
    for split in ["validation", *TEST_SPLITS]:
        _, references = read_pairs(prepared_tiny, split)
        encoded = tokenizers.encode_tgt(references)
        known = [
            (ids, ref) for ids, ref in zip(encoded, references, strict=True) if UNK_ID not in ids
        ]
        assert len(known) > len(references) // 2
        assert tokenizers.decode_tgt([ids for ids, _ in known]) == [ref for _, ref in known]


def test_decode_stops_at_eos_and_drops_specials(tokenized_tiny: Path) -> None:
    tokenizers = Tokenizers.load(tokenized_tiny)
    ids = tokenizers.encode_tgt(["Ein Hund rennt ."])[0]
    generated = [BOS_ID, *ids, EOS_ID, *ids, PAD_ID, PAD_ID]
    assert tokenizers.decode_tgt([generated, np.array([BOS_ID, *ids])]) == ["Ein Hund rennt ."] * 2


@pytest.mark.parametrize("split", SPLITS)
def test_npz_offsets_consistent(prepared_tiny: Path, tokenized_tiny: Path, split: str) -> None:
    tokenizers = Tokenizers.load(tokenized_tiny)
    encoded = load_split(tokenized_tiny, split)
    src, tgt = read_pairs(prepared_tiny, split)
    assert len(encoded) == len(src) == len(tgt)
    for tokens, offsets in (
        (encoded.src_tokens, encoded.src_offsets),
        (encoded.tgt_tokens, encoded.tgt_offsets),
    ):
        assert tokens.dtype == np.int32 and offsets.dtype == np.int64
        assert offsets[0] == 0 and offsets[-1] == len(tokens)
        assert len(offsets) == len(src) + 1
        assert np.all(np.diff(offsets) > 0)  # no empty sentence
        assert not np.isin(tokens, [PAD_ID, BOS_ID, EOS_ID]).any()
    assert np.array_equal(encoded.src_lengths, np.diff(encoded.src_offsets))
    expected_src = tokenizers.encode_src(src)
    expected_tgt = tokenizers.encode_tgt(tgt)
    for i in range(len(encoded)):
        assert encoded.src(i).tolist() == expected_src[i]
        assert encoded.tgt(i).tolist() == expected_tgt[i]
    with np.load(tokenized_tiny / f"{split}.npz") as archive:
        assert sorted(archive.files) == ["src_offsets", "src_tokens", "tgt_offsets", "tgt_tokens"]


@pytest.mark.parametrize(
    "params",
    [
        TokenizerParams(vocab_size=300, model_type="bpe", joint=True),
        TokenizerParams(vocab_size=300, model_type="unigram", joint=False),
    ],
    ids=["bpe-joint", "unigram-separate"],
)
def test_rerun_is_byte_identical(prepared_tiny: Path, tmp_path: Path, params) -> None:
    tokenize(prepared_tiny, params, tmp_path / "a")
    tokenize(prepared_tiny, params, tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left"


def test_separate_vocabularies(prepared_tiny: Path, tmp_path: Path) -> None:
    meta = tokenize(prepared_tiny, TokenizerParams(vocab_size=200, joint=False), tmp_path)
    assert meta["files"] == {"src": "spm_src.model", "tgt": "spm_tgt.model"}
    tokenizers = Tokenizers.load(tmp_path)
    assert not tokenizers.joint
    assert [p.name for p in tokenizers.model_files] == ["spm_src.model", "spm_tgt.model"]
    assert tokenizers.src_vocab_size == tokenizers.tgt_vocab_size == 200
    assert (tmp_path / "spm_src.vocab").is_file() and (tmp_path / "spm_tgt.vocab").is_file()
    src, tgt = read_pairs(prepared_tiny, "train")
    assert tokenizers.decode_tgt(tokenizers.encode_tgt(tgt[:20])) == tgt[:20]
    assert tokenizers.decode_src(tokenizers.encode_src(src[:20])) == src[:20]


def test_vocab_too_large_is_a_clear_error(prepared_tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"tokenizer.vocab_size 50000 is too large.*smaller"):
        tokenize(prepared_tiny, TokenizerParams(vocab_size=50000), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vocab_too_small_is_a_clear_error() -> None:
    text = [chr(c) * 3 for c in range(0x4E00, 0x4E00 + 200)]
    with pytest.raises(PipelineError, match=r"tokenizer\.vocab_size 16 is too small"):
        train_sentencepiece(text, TokenizerParams(vocab_size=16))


def test_missing_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="run the prepare stage first"):
        tokenize(tmp_path, TokenizerParams(), tmp_path / "out")
    with pytest.raises(PipelineError, match="run the tokenizer stage first"):
        load_split(tmp_path, "train")
    with pytest.raises(PipelineError, match="run the tokenizer stage first"):
        Tokenizers.load(tmp_path)


def test_tokenized_split_from_ids() -> None:
    split = TokenizedSplit.from_ids([[5, 6], [7]], [[8], [9, 10, 11]])
    assert len(split) == 2
    assert split.src(0).tolist() == [5, 6] and split.tgt(1).tolist() == [9, 10, 11]
    assert split.src_lengths.tolist() == [2, 1] and split.tgt_lengths.tolist() == [1, 3]


def run_stage(tmp_path: Path, prepared: Path, **tokenizer) -> subprocess.CompletedProcess:
    params = stage_params(tmp_path, tokenizer=tokenizer)
    command = [sys.executable, "-m", "pipelines.stages.tokenizer", "--params", str(params)]
    command += ["--prepared", str(prepared), "--out", str(tmp_path / "out")]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_stage_command(prepared_tiny: Path, tokenized_tiny: Path, tmp_path: Path) -> None:
    result = run_stage(tmp_path, prepared_tiny, vocab_size=TINY_VOCAB)
    assert result.returncode == 0, result.stderr
    for name in ["spm.model", "train.npz", "tokenizer.json"]:
        assert (tmp_path / "out" / name).read_bytes() == (tokenized_tiny / name).read_bytes()


def test_stage_vocab_too_large_exits_2(prepared_tiny: Path, tmp_path: Path) -> None:
    result = run_stage(tmp_path, prepared_tiny, vocab_size=50000)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "tokenizer.vocab_size 50000 is too large" in errors[0]
    assert not (tmp_path / "out").exists()
