"""Train SentencePiece (Kudo & Richardson, 2018) on the training split and
encode every prepared split once into flat id arrays.

Outputs in ``<out>`` (default ``data/tokenized``), written atomically as one folder:

- ``spm.model`` + ``spm.vocab`` (joint vocabulary, the default) or ``spm_src.*`` and ``spm_tgt.*``;
- ``tokenizer.json``: ``joint``, ``model_type``, ``src_vocab_size``, ``tgt_vocab_size``, ``files``
  (``src``/``tgt`` model file names), ``special_ids`` and per-split token and UNK counts;
- ``<split>.npz`` per split: int32 ``src_tokens``/``tgt_tokens`` (all sentences concatenated, no
  BOS/EOS; the collate adds them) and int64 ``src_offsets``/``tgt_offsets`` of length N+1, so
  sentence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.

Training is deterministic: text normalization is left to the prepare stage (SentencePiece's
``identity`` rule), the sampling seed and thread count are fixed, and the model is written from
memory so no temporary path ends up in it; the same input gives a byte-identical model.
"""


from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import sentencepiece as spm

from models.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from pipelines.core.atomic import atomic_path
from pipelines.core.errors import PipelineError
from pipelines.core.params import TokenizerParams
from pipelines.data.prepared import read_manifest, read_pairs
from pipelines.data.tokenized import TokenizedSplit, save_npz
from pipelines.data.vocab import JOINT_MODEL, META_FILE, SPECIAL_IDS, SRC_MODEL, TGT_MODEL

logger = logging.getLogger("nmt.tokenizer")

# Part of the model's TrainerSpec, so fixed: a different count would change the model bytes.
NUM_THREADS = 4
INPUT_SENTENCE_SIZE = 5_000_000  # sentences sampled (seeded) beyond this; Multi30k is far below
MAX_SENTENCE_BYTES = 8192
# Fixed rather than params.seed: the model then depends only on the `tokenizer` params and the
# data, which is exactly what the DVC stage declares.
SPM_SEED = 0
_TOO_SMALL = re.compile(r"smaller than required_chars\. (\d+) vs (\d+)")
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


# ----------------------------------------------------------------------------- training


def train_sentencepiece(
    sentences: list[str], params: TokenizerParams, seed: int = SPM_SEED
) -> bytes:
    """Train one SentencePiece model on `sentences`; return the serialized model."""
    if not sentences:
        raise PipelineError("no training sentences for the tokenizer")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=params.model_type,
            vocab_size=params.vocab_size,
            character_coverage=params.character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_piece="<pad>",
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            normalization_rule_name="identity",
            num_threads=NUM_THREADS,
            input_sentence_size=INPUT_SENTENCE_SIZE,
            shuffle_input_sentence=True,
            max_sentence_length=MAX_SENTENCE_BYTES,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise PipelineError(_explain_training_error(str(err), params)) from err
    return model.getvalue()


def _explain_training_error(message: str, params: TokenizerParams) -> str:
    too_high = _TOO_HIGH.search(message)
    if too_high:
        return (
            f"tokenizer.vocab_size {params.vocab_size} is too large for this training text "
            f"(SentencePiece can build at most {too_high.group(2)} pieces from it): set a "
            f"smaller tokenizer.vocab_size, e.g. {int(too_high.group(2)) // 8 * 8}"
        )
    too_small = _TOO_SMALL.search(message)
    if too_small:
        return (
            f"tokenizer.vocab_size {params.vocab_size} is too small for the characters of the "
            f"training text (it needs at least {too_small.group(2)}: every kept character plus "
            "the special tokens): set a larger tokenizer.vocab_size or lower "
            "tokenizer.character_coverage"
        )
    return f"SentencePiece training failed: {message.strip()}"


def vocab_text(model: bytes) -> str:
    """The ``.vocab`` listing (piece, tab, score per line), as ``spm_train`` writes it."""
    processor = spm.SentencePieceProcessor(model_proto=model)
    lines = (
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
        for i in range(processor.get_piece_size())
    )
    return "".join(lines)


def tokenize(
    prepared: str | Path,
    params: TokenizerParams,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Train the tokenizer(s) on the prepared training split, encode every split; return meta."""
    manifest = read_manifest(prepared)
    splits = [manifest["train"], manifest["validation"], *manifest["test"]]
    train_src, train_tgt = read_pairs(prepared, manifest["train"])

    if params.joint:
        logger.info("training a joint %s model, %d pieces", params.model_type, params.vocab_size)
        models = {JOINT_MODEL: train_sentencepiece(train_src + train_tgt, params)}
        files = {"src": JOINT_MODEL, "tgt": JOINT_MODEL}
    else:
        logger.info("training source and target %s models", params.model_type)
        models = {
            SRC_MODEL: train_sentencepiece(train_src, params),
            TGT_MODEL: train_sentencepiece(train_tgt, params),
        }
        files = {"src": SRC_MODEL, "tgt": TGT_MODEL}
    src_proc = spm.SentencePieceProcessor(model_proto=models[files["src"]])
    tgt_proc = spm.SentencePieceProcessor(model_proto=models[files["tgt"]])

    meta: dict[str, Any] = {
        "joint": params.joint,
        "model_type": params.model_type,
        "src_lang": manifest.get("src_lang"),
        "tgt_lang": manifest.get("tgt_lang"),
        "src_vocab_size": src_proc.get_piece_size(),
        "tgt_vocab_size": tgt_proc.get_piece_size(),
        "files": files,
        "special_ids": SPECIAL_IDS,
        "splits": {},
    }
    with atomic_path(out_dir, directory=True) as tmp:
        for name, model in models.items():
            (tmp / name).write_bytes(model)
            (tmp / name).with_suffix(".vocab").write_text(vocab_text(model), encoding="utf-8")
        for split in splits:
            src_text, tgt_text = (
                (train_src, train_tgt) if split == splits[0] else read_pairs(prepared, split)
            )
            encoded = TokenizedSplit.from_ids(
                src_proc.encode(src_text, out_type=int, num_threads=NUM_THREADS),
                tgt_proc.encode(tgt_text, out_type=int, num_threads=NUM_THREADS),
                name=split,
            )
            save_npz(tmp / f"{split}.npz", encoded.arrays())
            meta["splits"][split] = {
                "rows": len(encoded),
                "src_tokens": int(encoded.src_offsets[-1]),
                "tgt_tokens": int(encoded.tgt_offsets[-1]),
                "src_unk": int((encoded.src_tokens == UNK_ID).sum()),
                "tgt_unk": int((encoded.tgt_tokens == UNK_ID).sum()),
            }
            logger.info("%s: %d pairs encoded", split, len(encoded))
        (tmp / META_FILE).write_text(_json(meta), encoding="utf-8")
    return meta


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"
