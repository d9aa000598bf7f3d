"""Translate with a Transformer converted to CTranslate2 (Klein et al., 2020): the text side of
:class:`~pipelines.inference.translator.TextTranslator`, the beam search run by CTranslate2's
``Translator.translate_batch`` on the CPU, scored as ours is (GNMT length penalty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.vocab import BOS_ID, PAD_ID
from pipelines.core.decoding import Hypothesis
from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings
from pipelines.data.vocab import Tokenizers
from pipelines.inference.search import gnmt_length_penalty
from pipelines.inference.settings import DECODING_FILE
from pipelines.inference.translator import TextTranslator, one_line, read_folder

CT2_FOLDER = "ctranslate2"  # the CTranslate2 model inside a converted folder
CT2_MODEL = f"{CT2_FOLDER}/model.bin"
# CTranslate2 divides a finished hypothesis's log-probability by length ** alpha, and with
# alpha 0 it stops a sentence as soon as its best beam ends. This alpha keeps every score as it
# is (powf rounds length ** 1e-12 to 1.0) and our stopping rule (beam_size hypotheses finished);
# the GNMT penalty is then applied to the raw scores, as our beam search does.
RAW_SCORES = 1e-12


def import_ctranslate2() -> Any:
    """The ctranslate2 module, or a one-line error naming the extra that installs it."""
    try:
        import ctranslate2
    except ImportError as err:
        raise PipelineError(
            "the CTranslate2 engine needs ctranslate2: pip install 'nmt-pipeline[ct2]'"
        ) from err
    return ctranslate2


def is_converted_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a CTranslate2 model (``nmt export --format ctranslate2``)."""
    return (Path(folder) / CT2_FOLDER).is_dir()


class CTranslate2Translator(TextTranslator):
    """A converted folder's CTranslate2 model plus its tokenizers.

    The search is ours (:func:`~pipelines.inference.search.beam_search_n_best`): beams of
    `beam_size`, a sentence done once `beam_size` hypotheses have ended, PAD and BOS never
    generated, hypotheses ranked by log-probability / GNMT penalty. It differs in three ways:
    probabilities are normalised over the tokens that may be generated (ours keep PAD's and
    BOS's share, about nothing once trained); the length limit is the longest source's in the
    batch, and a hypothesis cut there gets no forced EOS; and CTranslate2 keeps the `beam_size`
    finished hypotheses with the best log-probabilities before the GNMT penalty reorders them,
    so a longer one can be missing from the end of an n-best list (never from its start).
    """

    def __init__(
        self,
        engine: Any,
        tokenizers: Tokenizers,
        config: dict,
        settings: DecodingSettings | None = None,
        settings_file: Path | None = None,
    ) -> None:
        super().__init__(tokenizers, config, settings, settings_file)
        self.engine = engine
        self.suppressed = [[tokenizers.tgt.id_to_piece(i)] for i in (PAD_ID, BOS_ID)]

    @classmethod
    def load(cls, folder: str | Path, threads: int = 0) -> CTranslate2Translator:
        """Load a converted folder on the CPU with `threads` threads (0: CTranslate2's default);
        a missing, incomplete or damaged folder is a one-line error naming the file."""
        folder = Path(folder)
        config, settings, tokenizers = read_folder(folder, CT2_MODEL)
        ctranslate2 = import_ctranslate2()
        try:
            engine = ctranslate2.Translator(
                str(folder / CT2_FOLDER), device="cpu", intra_threads=threads
            )
        except (RuntimeError, ValueError, OSError) as err:
            raise PipelineError(
                f"{folder / CT2_MODEL}: cannot load the CTranslate2 model ({one_line(err)})"
            ) from err
        settings_file = None if settings is None else folder / DECODING_FILE
        return cls(engine, tokenizers, config, settings, settings_file)

    def search(
        self, token_ids: list[list[int]], n_best: int, settings: DecodingSettings
    ) -> list[list[Hypothesis]]:
        # CTranslate2 appends EOS itself (add_source_eos), and counts the limit without EOS.
        sources = [self.tokenizers.src.id_to_piece(ids[:-1]) for ids in token_ids]
        results = self.engine.translate_batch(
            sources,
            beam_size=settings.beam_size,
            num_hypotheses=settings.beam_size,
            length_penalty=RAW_SCORES,
            max_decoding_length=max(map(len, token_ids)) + settings.max_len_margin - 1,
            min_decoding_length=0,
            max_input_length=0,
            suppress_sequences=self.suppressed,
            return_scores=True,
        )
        found = []
        for result in results:
            hypotheses = [
                Hypothesis(ids, score / gnmt_length_penalty(len(ids) + 1, settings.length_penalty))
                for ids, score in zip(
                    map(self.tokenizers.tgt.piece_to_id, result.hypotheses),
                    result.scores,
                    strict=True,
                )
            ]
            found.append(sorted(hypotheses, key=lambda h: h.score, reverse=True)[:n_best])
        return found
