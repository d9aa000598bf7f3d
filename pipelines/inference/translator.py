"""Load an exported model folder and translate raw sentences with batched beam search.

An exported folder (``artifacts/<arch>/``) holds ``model.safetensors``, ``config.json`` and
``tokenizer/``; weights load through safetensors, so nothing is ever unpickled. A shipped model's
folder also holds ``decoding.json``, the settings it was evaluated with (:mod:`.settings`): they
become the translator's default :class:`~pipelines.core.params.DecodingSettings`.

Sentences are normalized as the training data was (:func:`pipelines.data.normalize.normalize_text`
with the ``unicode_form`` recorded in ``config.json``, NFKC when absent) before they are encoded;
one that is empty once normalized translates to the empty string without reaching the model. A
damaged folder (a file that is not JSON, corrupt weights or tokenizer) is a one-line
:class:`~pipelines.core.errors.PipelineError` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models import BOS_ID, EOS_ID, PAD_ID, Seq2Seq, build_model
from models.attention import use_cudnn_attention
from models.config import ConfigError
from pipelines.core.decoding import Hypothesis
from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings
from pipelines.data.normalize import normalize_text
from pipelines.data.vocab import META_FILE, Tokenizers
from pipelines.inference.search import beam_search, beam_search_n_best
from pipelines.inference.settings import DECODING_FILE, read_settings, resolve_device

DEFAULT_UNICODE_FORM = "NFKC"  # the prepare stage's default, for folders that do not record one
UNICODE_FORMS = ("NFC", "NFKC", "NFD", "NFKD", "none")


@dataclass(frozen=True)
class Translation:
    """One hypothesis: detokenized text and its beam-search score (log-probability / lp)."""

    text: str
    score: float


@dataclass
class AttentionExample:
    """One sentence's translation with its cross-attention, for heatmaps."""

    src_pieces: list[str]
    tgt_pieces: list[str]
    attention: Tensor  # [heads, tgt_len, src_len]


def pad_batch(sequences: list[list[int]], device: torch.device) -> Tensor:
    """Right-pad token lists into a LongTensor [B, S] with PAD_ID."""
    width = max(len(s) for s in sequences)
    batch = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)
    for row, tokens in enumerate(sequences):
        batch[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return batch.to(device)


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), cut at `limit` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_json_file(path: Path) -> Any:
    """A JSON file's value; unreadable or invalid JSON is a one-line error naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: not valid JSON ({one_line(err)})") from err
    except OSError as err:
        raise PipelineError(f"{path}: cannot be read ({one_line(err)})") from err


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json``, checked for the keys a translator needs."""
    path = folder / "config.json"
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise PipelineError(f"{path}: expected a mapping, got {type(config).__name__}")
    for key in ("model", "src_vocab_size", "tgt_vocab_size"):
        if key not in config:
            raise PipelineError(f"{path}: missing key {key!r}")
    form = config.get("unicode_form", DEFAULT_UNICODE_FORM)
    if form not in UNICODE_FORMS:
        raise PipelineError(f"{path}: unicode_form {form!r} is not one of {UNICODE_FORMS}")
    return config


def load_weights(model: Seq2Seq, path: Path) -> None:
    """Load ``model.safetensors`` into `model`; a truncated, corrupt or mismatched file is a
    one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(model, str(path), device="cpu")
    except (SafetensorError, RuntimeError, OSError, ValueError) as err:
        raise PipelineError(f"{path}: cannot load the weights ({one_line(err)})") from err


def complete_model(processor: Any) -> bool:
    """Whether a loaded SentencePiece model has the specs that follow its pieces in the file: a
    file cut after its pieces still parses (a file cut inside them has fewer pieces than
    config.json says). True when no usable protobuf module is there to tell."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except (ImportError, TypeError):  # TypeError: a protobuf runtime too new for the module
        return True
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(processor.serialized_model_proto())
    return proto.HasField("trainer_spec") and proto.HasField("normalizer_spec")


def load_tokenizers(folder: Path, config: dict[str, Any]) -> Tokenizers:
    """``tokenizer/``: its metadata, SentencePiece models and their sizes checked against
    ``config.json``, each failure naming its file."""
    import sentencepiece as spm

    tokenizer = folder / "tokenizer"
    meta_path = tokenizer / META_FILE
    if not meta_path.is_file():
        missing = f"tokenizer/{META_FILE}"
        raise PipelineError(f"{folder}: not an exported model folder (missing {missing})")
    meta = read_json_file(meta_path)
    files = meta.get("files") if isinstance(meta, dict) else None
    if not (isinstance(files, dict) and all(isinstance(files.get(s), str) for s in ("src", "tgt"))):
        raise PipelineError(f'{meta_path}: expected "files" naming the src and tgt models')
    for name in dict.fromkeys(files.values()):
        if not (tokenizer / name).is_file():
            missing = f"tokenizer/{name}"
            raise PipelineError(f"{folder}: not an exported model folder (missing {missing})")
    try:
        tokenizers = Tokenizers.load(tokenizer)
    except (RuntimeError, OSError) as err:
        for name in dict.fromkeys(files.values()):
            try:
                spm.SentencePieceProcessor(model_file=str(tokenizer / name))
            except (RuntimeError, OSError) as bad:
                raise PipelineError(
                    f"{tokenizer / name}: not a SentencePiece model ({one_line(bad)})"
                ) from err
        raise PipelineError(f"{tokenizer}: cannot load the tokenizer ({one_line(err)})") from err
    processors = {"src": tokenizers.src, "tgt": tokenizers.tgt}
    for side, processor in processors.items():
        size, expected = processor.get_piece_size(), config[f"{side}_vocab_size"]
        if size != expected:
            raise PipelineError(
                f"{tokenizer / files[side]}: {size} pieces, but {folder / 'config.json'} has "
                f"{side}_vocab_size {expected} (a damaged or another model's tokenizer)"
            )
        if not complete_model(processor):
            raise PipelineError(
                f"{tokenizer / files[side]}: truncated SentencePiece model (no trainer or "
                "normalizer spec)"
            )
    return tokenizers


def read_folder(
    folder: Path, weights: str
) -> tuple[dict[str, Any], DecodingSettings | None, Tokenizers]:
    """``config.json``, ``decoding.json`` (None without one) and ``tokenizer/`` of an exported
    folder whose weights are the file `weights`; a missing or damaged file is a one-line error."""
    for needed in ("config.json", weights, "tokenizer"):
        if not (folder / needed).exists():
            raise PipelineError(f"{folder}: not an exported model folder (missing {needed})")
    config = read_config(folder)
    settings = read_settings(folder)
    return config, settings, load_tokenizers(folder, config)


class TextTranslator:
    """Raw text in, detokenized translations out, around an engine's search over token ids.

    `settings` are the decoding settings used when :meth:`translate` is given none: those recorded
    in the folder's ``decoding.json``, else the defaults; `settings_file` is that file, or None.
    `unicode_form` is the normalization the training data had (``config["unicode_form"]``).
    Subclasses give :meth:`search`: :class:`Translator` (PyTorch) and
    :class:`~pipelines.inference.ct2_translator.CTranslate2Translator`.
    """

    def __init__(
        self,
        tokenizers: Tokenizers,
        config: dict,
        settings: DecodingSettings | None = None,
        settings_file: Path | None = None,
    ) -> None:
        self.tokenizers = tokenizers
        self.config = config
        self.settings = settings if settings is not None else DecodingSettings()
        self.settings_file = settings_file
        self.unicode_form: str = config.get("unicode_form", DEFAULT_UNICODE_FORM)

    def search(
        self, token_ids: list[list[int]], n_best: int, settings: DecodingSettings
    ) -> list[list[Hypothesis]]:
        """The `n_best` best hypotheses of each source (ids ending in EOS), best first."""
        raise NotImplementedError

    def normalize(self, sentence: str) -> str:
        """`sentence` normalized as the training data was (Unicode form, controls, spaces)."""
        return normalize_text(sentence, self.unicode_form)[0]

    def _encode(self, sentences: list[str]) -> list[list[int]]:
        return [[*ids, EOS_ID] for ids in self.tokenizers.encode_src(sentences)]

    def iter_batches(
        self, sentences: list[str], batch_size: int
    ) -> Iterator[tuple[list[int], list[list[int]]]]:
        """Batches of (original positions, token ids) of the non-empty `sentences` (already
        normalized), sorted by length to limit padding; empty ones are left out."""
        positions = [i for i, sentence in enumerate(sentences) if sentence]
        encoded = dict(zip(positions, self._encode([sentences[i] for i in positions]), strict=True))
        order = sorted(positions, key=lambda i: len(encoded[i]))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            yield batch, [encoded[i] for i in batch]

    def translate(
        self,
        sentences: Iterable[str],
        settings: DecodingSettings | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Translate `sentences` in order with `settings` (default: the translator's own).

        Each sentence is normalized first; one that is then empty translates to "". Empty input
        gives an empty list.
        """
        return [best.text for best, *_ in self.translate_n_best(sentences, 1, settings, progress)]

    def translate_n_best(
        self,
        sentences: Iterable[str],
        n_best: int,
        settings: DecodingSettings | None = None,
        progress: bool = False,
    ) -> list[list[Translation]]:
        """The best `n_best` translations of each sentence (1 <= n_best <= beam size), best
        first; the first is :meth:`translate`'s. An empty sentence has one: ("", 0.0)."""
        settings = self.settings if settings is None else settings
        if not 1 <= n_best <= settings.beam_size:
            raise PipelineError(
                f"n_best {n_best}: must be between 1 and the beam size ({settings.beam_size})"
            )
        normalized = [self.normalize(sentence) for sentence in sentences]
        outputs = [[Translation("", 0.0)] for _ in normalized]
        batches: Iterable = list(self.iter_batches(normalized, settings.batch_size))
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="translating", unit="batch")
        for positions, token_ids in batches:
            found = self.search(token_ids, n_best, settings)
            texts = iter(self.tokenizers.decode_tgt([h.tokens for hyps in found for h in hyps]))
            for position, hypotheses in zip(positions, found, strict=True):
                outputs[position] = [Translation(next(texts), h.score) for h in hypotheses]
        return outputs


class Translator(TextTranslator):
    """A PyTorch model plus its tokenizers, decoding with :func:`beam_search_n_best`."""

    def __init__(
        self,
        model: Seq2Seq,
        tokenizers: Tokenizers,
        config: dict,
        settings: DecodingSettings | None = None,
        settings_file: Path | None = None,
    ) -> None:
        super().__init__(tokenizers, config, settings, settings_file)
        self.model = model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Translator:
        """Load an exported model folder; a missing, incomplete or damaged folder is a one-line
        error naming the file.

        `device` is a torch device or ``auto`` (cuda when available, else cpu). The folder's
        ``decoding.json``, if any, becomes the translator's `settings`.
        """
        folder = Path(folder)
        config, settings, tokenizers = read_folder(folder, "model.safetensors")
        device = resolve_device(device)
        try:
            model = build_model(config["model"], config["src_vocab_size"], config["tgt_vocab_size"])
        except (ConfigError, TypeError, ValueError) as err:
            raise PipelineError(f"{folder / 'config.json'}: {one_line(err)}") from err
        load_weights(model, folder / "model.safetensors")
        if torch.device(device).type == "cuda":
            use_cudnn_attention(False)  # beam search meets a new key length at every step
        return cls(
            model.to(device),
            tokenizers,
            config,
            settings,
            None if settings is None else folder / DECODING_FILE,
        )

    def search(
        self, token_ids: list[list[int]], n_best: int, settings: DecodingSettings
    ) -> list[list[Hypothesis]]:
        return beam_search_n_best(
            self.model,
            pad_batch(token_ids, self.device),
            n_best,
            beam_size=settings.beam_size,
            length_penalty=settings.length_penalty,
            max_len_margin=settings.max_len_margin,
        )

    def attention_example(
        self, sentence: str, settings: DecodingSettings | None = None
    ) -> AttentionExample | None:
        """Greedy-decode one sentence and return its cross-attention (None without attention,
        or for a sentence that is empty once normalized).

        Only `settings.max_len_margin` applies (default: the translator's own settings).
        """
        margin = (self.settings if settings is None else settings).max_len_margin
        sentence = self.normalize(sentence)
        if not sentence:
            return None
        src_ids = self._encode([sentence])[0]
        src = pad_batch([src_ids], self.device)
        hypothesis = beam_search(self.model, src, beam_size=1, max_len_margin=margin)[0]
        tgt_in = pad_batch([[BOS_ID, *hypothesis.tokens]], self.device)
        with torch.inference_mode():
            attention = self.model.cross_attention(src, tgt_in)
        if attention is None:
            return None
        src_pieces = [self.tokenizers.src.id_to_piece(i) for i in src_ids[:-1]] + ["</s>"]
        tgt_pieces = [self.tokenizers.tgt.id_to_piece(i) for i in hypothesis.tokens] + ["</s>"]
        # cross_attention over tgt_in = BOS + tokens gives one row per predicted token (+ EOS).
        return AttentionExample(src_pieces, tgt_pieces, attention.float().cpu())
