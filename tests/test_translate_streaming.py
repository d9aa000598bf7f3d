"""`nmt translate` on a fast exported folder: streaming, empty lines, n-best, --version, input
normalization and damaged model folders."""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from models import BOS_ID, EOS_ID, PAD_ID, UNK_ID, build_model
from pipelines import cli
from pipelines.core.errors import EXIT_USER_ERROR, PipelineError
from pipelines.core.params import DecodingSettings
from pipelines.inference import streaming
from pipelines.inference import translator as translator_module
from pipelines.inference.search import beam_search, beam_search_n_best, gnmt_length_penalty
from pipelines.inference.translator import Translator
from tests.exported_model import MODEL, SENTENCES, make_exported_folder

# Short outputs keep the random model fast; a beam of 3 for the n-best tests.
SETTINGS = DecodingSettings(beam_size=3, length_penalty=0.6, max_len_margin=5, batch_size=2)
TIMEOUT = 120  # seconds for a subprocess's answer: it imports torch on a busy machine


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small decodes fastest on one thread (many are slow on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An exported folder with decoding.json = SETTINGS."""
    from pipelines.inference.settings import write_settings

    folder = make_exported_folder(tmp_path_factory.mktemp("model") / "transformer")
    write_settings(folder, SETTINGS)
    return folder


@pytest.fixture(scope="module")
def translator(folder):
    return Translator.load(folder)


@pytest.fixture(autouse=True)
def outside_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run_file(tmp_path, capsys, folder, text: str, *flags: str):
    """`nmt translate` on a file holding `text`: its captured stdout and stderr."""
    source = tmp_path / "input.txt"
    source.write_text(text, encoding="utf-8")
    cli.main(["translate", "--model", str(folder), *flags, str(source)])
    return capsys.readouterr()


def translate_file(tmp_path, capsys, folder, text: str, *flags: str) -> str:
    return run_file(tmp_path, capsys, folder, text, *flags).out


def user_error(capsys, *argv: str) -> str:
    """The one `error:` line of a command that must fail with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


class Lines:
    """Lines of a subprocess's stdout, read by a thread so that each can be awaited with a
    timeout."""

    def __init__(self, stream) -> None:
        self.queue: queue.Queue[bytes] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(b"")  # end of output

    def take(self, count: int) -> list[str]:
        return [self.queue.get(timeout=TIMEOUT).decode().removesuffix("\n") for _ in range(count)]


def start(folder: Path, *flags: str, stdin=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "translate", "--model", str(folder), *flags],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


# --- streaming ----------------------------------------------------------------------------------


def test_a_pipe_is_translated_one_batch_at_a_time(folder, translator):
    """The first batch comes back while stdin is still open: nothing waits for the end."""
    first, second = SENTENCES[:2], SENTENCES[2:]
    process = start(folder)  # batch size 2, from decoding.json
    try:
        output = Lines(process.stdout)
        process.stdin.write("".join(f"{s}\n" for s in first).encode())
        process.stdin.flush()
        assert output.take(2) == translator.translate(first)
        assert process.poll() is None  # still reading its input
        process.stdin.write("".join(f"{s}\n" for s in second).encode())
        process.stdin.close()
        assert output.take(len(second) + 1) == [*translator.translate(second), ""]
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals here")
def test_from_a_terminal_each_line_is_translated_as_it_is_typed(folder, translator):
    controller, terminal = os.openpty()
    process = start(folder, "--batch-size", "8", stdin=terminal)
    os.close(terminal)
    try:
        output = Lines(process.stdout)
        os.write(controller, f"{SENTENCES[0]}\n".encode())
        assert output.take(1) == translator.translate(SENTENCES[:1])  # not waiting for 8 lines
        assert process.poll() is None
        os.write(controller, f"{SENTENCES[1]}\n\x04".encode())  # Ctrl-D: end of input
        assert output.take(2) == [*translator.translate(SENTENCES[1:2]), ""]
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        os.close(controller)
        process.kill()
        process.wait()


def test_output_lines_match_input_lines_across_batches(tmp_path, capsys, folder, translator):
    sentences = [*SENTENCES, "A dog runs.", "The man in the snow."]
    out = translate_file(tmp_path, capsys, folder, "".join(f"{s}\n" for s in sentences))
    # Batches of 2 lines, in input order.
    expected = [t for i in range(0, 5, 2) for t in translator.translate(sentences[i : i + 2])]
    assert out.splitlines() == expected


def test_progress_bar_counts_the_lines_of_a_file(tmp_path, capsys, folder):
    text = "".join(f"{s}\n" for s in SENTENCES)
    quiet = run_file(tmp_path, capsys, folder, text).err
    shown = run_file(tmp_path, capsys, folder, text, "--progress-threshold", "3").err
    assert "translating" not in quiet
    assert "translating" in shown and "3/3" in shown


def test_progress_bar_of_a_pipe_appears_at_the_threshold_without_a_total(capsys):
    progress = streaming.Progress(None, threshold=2)
    progress.update(1)
    assert progress.bar is None
    progress.update(2)
    progress.close()
    err = capsys.readouterr().err
    assert "translating: 3line" in err


# --- empty lines --------------------------------------------------------------------------------


@pytest.fixture
def model_rows(monkeypatch):
    """The source rows each beam search got."""
    rows: list[list[int]] = []
    search = translator_module.beam_search_n_best

    def recording(model, src, *args, **kwargs):
        rows.extend(src.tolist())
        return search(model, src, *args, **kwargs)

    monkeypatch.setattr(translator_module, "beam_search_n_best", recording)
    return rows


def test_empty_and_blank_lines_give_empty_lines(tmp_path, capsys, folder, translator, model_rows):
    text = f"{SENTENCES[0]}\n\n \t \n{SENTENCES[1]}\n\x07\n"
    out = translate_file(tmp_path, capsys, folder, text)
    first, second = translator.translate(SENTENCES[:1]), translator.translate(SENTENCES[1:2])
    assert out.split("\n") == [*first, "", "", *second, "", ""]
    model_rows.clear()
    assert translator.translate(["", "   ", "\t\x0c"]) == ["", "", ""]
    assert model_rows == []  # nothing reached the model
    assert translator.translate(["", SENTENCES[0], " "]) == ["", *first, ""]
    assert len(model_rows) == 1


def test_empty_input_gives_empty_output(tmp_path, capsys, folder):
    assert translate_file(tmp_path, capsys, folder, "") == ""


# --- n-best -------------------------------------------------------------------------------------

N_BEST_LINE = re.compile(r"^(\d+)\t(-?\d+\.\d{4})\t(.*)$")


def test_n_best_prints_k_scored_hypotheses_per_line_best_first(tmp_path, capsys, folder):
    text = f"{SENTENCES[0]}\n\n{SENTENCES[1]}\n{SENTENCES[2]}\n"
    best = translate_file(tmp_path, capsys, folder, text).splitlines()
    lines = translate_file(tmp_path, capsys, folder, text, "--n-best", "3").splitlines()
    parsed = [N_BEST_LINE.match(line) for line in lines]
    assert all(parsed), lines
    by_input: dict[int, list[tuple[float, str]]] = {}
    for match in parsed:
        by_input.setdefault(int(match[1]), []).append((float(match[2]), match[3]))
    assert sorted(by_input) == [1, 2, 3, 4]
    assert by_input[2] == [(0.0, "")]  # the empty line: one empty hypothesis
    for number in (1, 3, 4):
        scores = [score for score, _ in by_input[number]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert by_input[number][0][1] == best[number - 1]  # the first is the 1-best output


def teacher_forced_score(model, src, tokens: list[int], alpha: float) -> float:
    """log p(tokens + EOS | src) / lp, computed by teacher forcing, not by the search."""
    tgt_in = torch.tensor([[BOS_ID, *tokens]])
    with torch.inference_mode():
        log_probs = model(src, tgt_in).float().log_softmax(-1)[0]
    total = sum(log_probs[t, token].item() for t, token in enumerate([*tokens, EOS_ID]))
    return total / gnmt_length_penalty(len(tokens) + 1, alpha)


def test_beam_search_n_best_starts_with_the_1_best_and_scores_each_hypothesis():
    torch.manual_seed(1)
    model = build_model(MODEL, 64).eval()
    src = torch.tensor([[5, 9, 17, 30, EOS_ID], [12, 40, EOS_ID, PAD_ID, PAD_ID]])
    best = beam_search(model, src, beam_size=4, length_penalty=0.6, max_len_margin=3)
    for k in (1, 2, 4):
        n_best = beam_search_n_best(model, src, k, 4, length_penalty=0.6, max_len_margin=3)
        assert [hypotheses[0] for hypotheses in n_best] == best
        for row, hypotheses in enumerate(n_best):
            assert len(hypotheses) == k
            scores = [h.score for h in hypotheses]
            assert scores == sorted(scores, reverse=True)
            assert len({tuple(h.tokens) for h in hypotheses}) == k
            sentence = src[row : row + 1, : int((src[row] != PAD_ID).sum())]
            for h in hypotheses:
                expected = teacher_forced_score(model, sentence, h.tokens, 0.6)
                assert h.score == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="n_best"):
        beam_search_n_best(model, src, 5, beam_size=4)


def test_a_beam_wide_enough_for_every_output_gives_the_exact_n_best():
    """Vocabulary UNK + 2 words, outputs of at most 2 tokens: 13 in all, each kept by the beam."""
    torch.manual_seed(2)
    model = build_model(MODEL, 6).eval()
    src = torch.tensor([[4, EOS_ID]])  # limit: 2 + margin 1 = 3 tokens, EOS included
    outputs = [list(p) for n in range(3) for p in itertools.product([UNK_ID, 4, 5], repeat=n)]
    exact = sorted((teacher_forced_score(model, src, o, 1.0) for o in outputs), reverse=True)
    (n_best,) = beam_search_n_best(model, src, 5, 40, length_penalty=1.0, max_len_margin=1)
    assert [h.score for h in n_best] == pytest.approx(exact[:5], abs=1e-5)


def test_n_best_of_the_translator_starts_with_its_translation(translator):
    n_best = translator.translate_n_best(SENTENCES, 3)
    assert [hypotheses[0].text for hypotheses in n_best] == translator.translate(SENTENCES)
    with pytest.raises(PipelineError, match="beam size"):
        translator.translate_n_best(SENTENCES, 4)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--n-best", "4"), "--n-best 4: must be at most the beam size (3)"),
        (("--n-best", "2", "--beam-size", "1"), "--n-best 2: must be at most the beam size (1)"),
        (("--n-best", "0"), "--n-best: must be >= 1"),
    ],
)
def test_n_best_beyond_the_beam_is_a_one_line_error(tmp_path, capsys, folder, flags, message):
    source = tmp_path / "input.txt"
    source.write_text("A man.\n")
    assert message in user_error(capsys, "translate", "--model", str(folder), *flags, str(source))


def test_help_documents_the_n_best_format(capsys):
    with pytest.raises(SystemExit):
        cli.main(["translate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "<input line number>\\t<score>\\t<hypothesis>" in text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"nmt {version('nmt-pipeline')}\n"


# --- normalization ------------------------------------------------------------------------------

RAW = "\uff21 man\trides  a red\x07 bike.\u200b "  # fullwidth A, tab, control, zero-width space
NORMALIZED = "A man rides a red bike."


def test_input_is_normalized_like_the_training_data(tmp_path, capsys, folder, translator):
    assert translator.unicode_form == "NFKC"
    assert translator.normalize(RAW) == NORMALIZED
    # Unnormalized, the model would see other tokens.
    assert translator.tokenizers.encode_src([RAW]) != translator.tokenizers.encode_src([NORMALIZED])
    assert translator.translate([RAW]) == translator.translate([NORMALIZED])
    out = translate_file(tmp_path, capsys, folder, f"{RAW}\n{NORMALIZED}\n")
    first, second = out.splitlines()
    assert first == second


def damaged_copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    return copy


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_the_unicode_form_comes_from_the_config(tmp_path, folder):
    copy = damaged_copy(folder, tmp_path)
    edit_config(copy, unicode_form="none")
    assert Translator.load(copy).normalize(RAW) == "\uff21 man rides a red bike."
    edit_config(copy, unicode_form=None)  # a folder exported before it was recorded
    assert Translator.load(copy).unicode_form == "NFKC"
    edit_config(copy, unicode_form="NFX")
    with pytest.raises(PipelineError, match=r"config.json: unicode_form 'NFX'"):
        Translator.load(copy)


# --- damaged model folders ----------------------------------------------------------------------


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    assert 0 < keep < len(data)
    path.write_bytes(data[:keep])


def spm_proto(folder: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((folder / "tokenizer" / "spm.model").read_bytes())
    return proto


def spec_offset(folder: Path) -> int:
    """Where the pieces end in the file: the specs (trainer, normalizer) follow."""
    proto = spm_proto(folder)
    proto.ClearField("trainer_spec")
    proto.ClearField("normalizer_spec")
    proto.ClearField("denormalizer_spec")
    return len(proto.SerializeToString())


def piece_boundary(folder: Path) -> int:
    """Where the last piece starts in the file: cut there, the file holds one piece less."""
    proto = spm_proto(folder)
    del proto.pieces[-1]
    for spec in ("trainer_spec", "normalizer_spec", "denormalizer_spec"):
        proto.ClearField(spec)
    return len(proto.SerializeToString())


DAMAGES = {
    "weights truncated": (
        lambda f: truncate(f / "model.safetensors", (f / "model.safetensors").stat().st_size // 2),
        "model.safetensors: cannot load the weights",
    ),
    "weights not safetensors": (
        lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64),
        "model.safetensors: cannot load the weights",
    ),
    "weights empty": (
        lambda f: (f / "model.safetensors").write_bytes(b""),
        "model.safetensors: cannot load the weights",
    ),
    "weights of another model": (
        lambda f: edit_config(f, model={**MODEL, "d_model": 32}),
        "model.safetensors: cannot load the weights (Error(s) in loading state_dict",
    ),
    "weights missing": (
        lambda f: (f / "model.safetensors").unlink(),
        "not an exported model folder (missing model.safetensors)",
    ),
    "config not JSON": (
        lambda f: (f / "config.json").write_text('{"arch": "transformer",'),
        "config.json: not valid JSON",
    ),
    "config not text": (
        lambda f: (f / "config.json").write_bytes(b"\xff\xfe\x00"),
        "config.json: not valid JSON",
    ),
    "config not a mapping": (
        lambda f: (f / "config.json").write_text("[]"),
        "config.json: expected a mapping",
    ),
    "config without the model": (
        lambda f: edit_config(f, model=None),
        "config.json: missing key 'model'",
    ),
    "config with an unknown family": (
        lambda f: edit_config(f, model={"family": "quantum"}),
        "config.json: family: unknown family 'quantum'",
    ),
    "tokenizer model corrupt": (
        lambda f: (f / "tokenizer" / "spm.model").write_bytes(b"not a model"),
        "tokenizer/spm.model: not a SentencePiece model",
    ),
    "tokenizer model cut inside its pieces": (
        lambda f: truncate(f / "tokenizer" / "spm.model", piece_boundary(f)),
        "tokenizer/spm.model: 63 pieces, but",
    ),
    "tokenizer model cut after its pieces": (
        lambda f: truncate(f / "tokenizer" / "spm.model", spec_offset(f)),
        "tokenizer/spm.model: truncated SentencePiece model",
    ),
    "tokenizer model cut anywhere else": (
        lambda f: truncate(f / "tokenizer" / "spm.model", spec_offset(f) - 3),
        "tokenizer/spm.model: not a SentencePiece model",
    ),
    "tokenizer model missing": (
        lambda f: (f / "tokenizer" / "spm.model").unlink(),
        "not an exported model folder (missing tokenizer/spm.model)",
    ),
    "tokenizer metadata not JSON": (
        lambda f: (f / "tokenizer" / "tokenizer.json").write_text("joint: yes"),
        "tokenizer/tokenizer.json: not valid JSON",
    ),
    "tokenizer metadata without files": (
        lambda f: (f / "tokenizer" / "tokenizer.json").write_text('{"joint": true}'),
        'tokenizer/tokenizer.json: expected "files"',
    ),
    "tokenizer metadata missing": (
        lambda f: (f / "tokenizer" / "tokenizer.json").unlink(),
        "not an exported model folder (missing tokenizer/tokenizer.json)",
    ),
    "decoding settings not JSON": (
        lambda f: (f / "decoding.json").write_bytes(b"\xff"),
        "decoding.json: not valid JSON",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_model_folder_is_a_one_line_error_naming_the_file(
    tmp_path, capsys, folder, damage
):
    copy = damaged_copy(folder, tmp_path)
    spoil, message = DAMAGES[damage]
    spoil(copy)
    source = tmp_path / "input.txt"
    source.write_text("A man.\n")
    err = user_error(capsys, "translate", "--model", str(copy), str(source))
    assert message in err
    assert capsys.readouterr().out == ""
