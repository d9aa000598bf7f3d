"""`nmt export --format ctranslate2` and the CTranslate2 engine of `nmt translate`: tiny
Transformers, trained for a moment to reverse their input, decode with CTranslate2 as with our
beam search; other families, damaged folders and a missing package are one-line errors."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import BOS_ID, EOS_ID, PAD_ID
from pipelines import cli
from pipelines.core.errors import EXIT_USER_ERROR
from pipelines.core.params import DecodingSettings
from pipelines.data.prepared import jsonl_bytes
from pipelines.inference.ct2_conversion import export_ctranslate2
from pipelines.inference.ct2_translator import CT2_MODEL, CTranslate2Translator
from pipelines.inference.settings import read_settings, write_settings
from pipelines.inference.translator import Translator, pad_batch
from tests.exported_model import MODEL, WORDS, make_exported_folder
from tests.pipeline_helpers import REPO

SETTINGS = DecodingSettings(beam_size=4, length_penalty=0.6, max_len_margin=20, batch_size=8)
VARIANTS = {
    "post-norm, tied": {**MODEL, "norm": "post"},
    "pre-norm, tied": {**MODEL, "norm": "pre"},
    "pre-norm, separate embeddings, learned positions, GELU": {
        **MODEL,
        "norm": "pre",
        "tie_embeddings": False,
        "positional": "learned",
        "activation": "gelu",
        "encoder_layers": 2,
    },
}


def sentences(lengths: range, step: int) -> list[str]:
    """Every `step`-th sequence of distinct WORDS, for each number of words in `lengths`."""
    return [
        " ".join(words)
        for length in lengths
        for words in itertools.islice(itertools.permutations(WORDS, length), 0, 5000, step)
    ]


TRAINING = sentences(range(2, 7), 7)
SOURCES = sentences(range(2, 8), 311)  # outputs of many lengths
TEXT = "A man rides a red bike.\n\n  \nThe dog runs in the snow.\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models decode fastest on one thread (many are slow on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def outside_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the folders' own or default settings


def train_to_reverse(translator: Translator, steps: int = 300) -> None:
    """A few Adam steps teaching `translator.model` to reverse the subwords of a sentence: its
    outputs then end where a trained model's do, not at the length limit as random ones. PAD
    and BOS are never targets, so, as in a trained model, they get (almost) no probability."""
    torch.manual_seed(0)  # dropout: the same model whichever tests run before
    model = translator.model.train()
    sentences = translator.tokenizers.encode_src(TRAINING)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = [sentences[i] for i in torch.randint(len(sentences), (32,), generator=generator)]
        src = pad_batch([[*ids, EOS_ID] for ids in batch], torch.device("cpu"))
        tgt_in = pad_batch([[BOS_ID, *ids[::-1]] for ids in batch], torch.device("cpu"))
        tgt_out = pad_batch([[*ids[::-1], EOS_ID] for ids in batch], torch.device("cpu"))
        logits = model.decode(tgt_in, model.encode(src))  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model.output_projection.bias[[PAD_ID, BOS_ID]] = -30.0


@pytest.fixture(scope="module", params=list(VARIANTS))
def engines(request, tmp_path_factory) -> tuple[Translator, CTranslate2Translator, Path]:
    """Our translator of a trained tiny model, its CTranslate2 conversion, and the converted
    folder."""
    from safetensors.torch import save_model

    folder = make_exported_folder(
        tmp_path_factory.mktemp("model") / "m", model=VARIANTS[request.param]
    )
    write_settings(folder, SETTINGS)
    translator = Translator.load(folder)
    train_to_reverse(translator)
    save_model(translator.model, str(folder / "model.safetensors"))
    converted = folder.parent / "converted"
    export_ctranslate2(translator, str(folder), converted)
    return translator, CTranslate2Translator.load(converted, threads=1), converted


@pytest.mark.parametrize("beam_size", [1, 4])
def test_ctranslate2_finds_our_translations_with_our_scores(engines, beam_size):
    ours, converted, _ = engines
    settings = replace(SETTINGS, beam_size=beam_size)
    token_ids = ours._encode(SOURCES)
    expected = [hyps[0] for hyps in ours.search(token_ids, 1, settings)]
    found = [hyps[0] for hyps in converted.search(token_ids, 1, settings)]
    assert [h.tokens for h in found] == [h.tokens for h in expected]
    assert [h.score for h in found] == pytest.approx([h.score for h in expected], abs=1e-4)
    # The outputs end by themselves, at many lengths, before the length limit.
    lengths = {len(h.tokens) for h in expected}
    limit = min(map(len, token_ids)) + settings.max_len_margin - 1
    assert len(lengths) >= 4 and max(lengths) < limit


def test_n_best_lists_agree_but_for_a_long_hypothesis_ending_with_many_others(engines):
    """When more than beam_size hypotheses end at one step, CTranslate2 keeps the beam_size with
    the best log-probabilities before the length penalty reorders them, and ours keeps them all:
    a longer hypothesis can then be missing from the end of its n-best list."""
    ours, converted, _ = engines
    token_ids = ours._encode(SOURCES)
    expected = ours.search(token_ids, SETTINGS.beam_size, SETTINGS)
    found = converted.search(token_ids, SETTINGS.beam_size, SETTINGS)
    same = 0
    for mine, theirs in zip(expected, found, strict=True):
        scores = {tuple(h.tokens): h.score for h in mine}
        shared = [h for h in theirs if tuple(h.tokens) in scores]
        assert [h.score for h in shared] == pytest.approx(
            [scores[tuple(h.tokens)] for h in shared], abs=1e-4
        )
        assert theirs[0].tokens == mine[0].tokens
        same += [h.tokens for h in theirs] == [h.tokens for h in mine]
    assert same >= 0.8 * len(SOURCES)


def test_pad_and_bos_mass_is_dropped_from_scores_but_tokens_agree(tmp_path):
    """With probability on PAD and BOS (an untrained output bias), CTranslate2 normalises over
    the tokens it may generate: its scores are higher, its greedy choices the same."""
    folder = make_exported_folder(tmp_path / "m", model=VARIANTS["post-norm, tied"])
    translator = Translator.load(folder)
    train_to_reverse(translator)
    with torch.no_grad():
        translator.model.output_projection.bias[[PAD_ID, BOS_ID]] = 2.0
    export_ctranslate2(translator, str(folder), tmp_path / "converted")
    converted = CTranslate2Translator.load(tmp_path / "converted", threads=1)
    settings = replace(SETTINGS, beam_size=1)
    token_ids = translator._encode(SOURCES)
    expected = [h for (h,) in translator.search(token_ids, 1, settings)]
    found = [h for (h,) in converted.search(token_ids, 1, settings)]
    assert [h.tokens for h in found] == [h.tokens for h in expected]
    assert all(f.score > e.score + 1e-3 for f, e in zip(found, expected, strict=True))


def test_int8_weights_compute_in_int8_and_translate_mostly_alike(engines, tmp_path):
    ours, float32, _ = engines
    weights = {name: value.clone() for name, value in ours.model.state_dict().items()}
    export_ctranslate2(ours, "model", tmp_path / "int8", quantization="int8")
    for name, value in ours.model.state_dict().items():  # quantized copies, not the model
        assert torch.equal(value, weights[name]), name
    int8 = CTranslate2Translator.load(tmp_path / "int8", threads=1)
    assert (float32.engine.compute_type, int8.engine.compute_type) == ("float32", "int8_float32")
    pairs = zip(int8.translate(SOURCES), float32.translate(SOURCES), strict=True)
    same = sum(a == b for a, b in pairs)
    assert same >= 0.7 * len(SOURCES)


def run_cli(capsys, *argv: str) -> str:
    cli.main(list(argv))
    return capsys.readouterr().out


def user_error(capsys, *argv: str) -> str:
    """The one `error:` line of a command that must fail with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An exported tiny Transformer with decoding.json, trained to reverse."""
    from safetensors.torch import save_model

    folder = make_exported_folder(tmp_path_factory.mktemp("cli") / "transformer")
    write_settings(folder, SETTINGS)
    translator = Translator.load(folder)
    train_to_reverse(translator)
    save_model(translator.model, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("flags", [[], ["--n-best", "3"], ["--beam-size", "1"]])
def test_nmt_translate_on_the_converted_folder_prints_what_pytorch_prints(
    tmp_path, capsys, folder, flags
):
    converted = tmp_path / "converted"
    run_cli(
        capsys,
        "export",
        "--format",
        "ctranslate2",
        "--model",
        str(folder),
        "--output",
        str(converted),
    )
    assert read_settings(converted) == SETTINGS
    assert json.loads((converted / "config.json").read_text()) == json.loads(
        (folder / "config.json").read_text()
    )
    source = tmp_path / "input.txt"
    source.write_text(TEXT, encoding="utf-8")
    expected = run_cli(capsys, "translate", "--model", str(folder), *flags, str(source))
    output = run_cli(capsys, "translate", "--model", str(converted), *flags, str(source))
    assert output == expected
    if not flags:  # one line per input line, blank lines kept blank
        assert output.split("\n")[1:3] == ["", ""] and output.count("\n") == 4


def test_export_of_a_converted_folder_or_onto_an_existing_path_is_refused(tmp_path, capsys, folder):
    converted = tmp_path / "converted"
    run_cli(capsys, "export", "--model", str(folder), "--output", str(converted))
    err = user_error(capsys, "export", "--model", str(folder), "--output", str(converted))
    assert f"{converted}: already exists; remove it or give another --output" in err
    err = user_error(capsys, "export", "--model", str(converted), "--output", str(tmp_path / "x"))
    assert f"{converted}: already converted to CTranslate2" in err
    err = user_error(
        capsys,
        "export",
        "--model",
        str(folder),
        "--output",
        str(tmp_path / "y"),
        "--quantization",
        "int4",
    )
    assert "--quantization int4: expected one of ('float32', 'int8')" in err


RECURRENT = {
    "family": "recurrent",
    "embedding_dim": 8,
    "hidden_size": 8,
    "encoder_layers": 1,
    "decoder_layers": 1,
}
CONVOLUTIONAL = {
    "family": "convolutional",
    "embedding_dim": 8,
    "hidden_size": 8,
    "encoder_layers": 1,
    "decoder_layers": 1,
}


@pytest.mark.parametrize(
    ("model", "family"), [(RECURRENT, "recurrent"), (CONVOLUTIONAL, "convolutional")]
)
def test_only_transformers_convert_and_the_others_stay_on_pytorch(tmp_path, capsys, model, family):
    lstm = make_exported_folder(tmp_path / "lstm", model=model)
    err = user_error(capsys, "export", "--model", str(lstm), "--output", str(tmp_path / "out"))
    assert err == (
        f"error: {lstm}: a {family} model; only Transformers convert to CTranslate2, so "
        f"`nmt translate --model {lstm}` runs it with PyTorch\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_missing_or_damaged_folder_is_a_one_line_error_naming_the_file(tmp_path, capsys, folder):
    err = user_error(
        capsys, "export", "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")
    )
    assert "nowhere: not an exported model folder (missing config.json)" in err
    converted = tmp_path / "converted"
    run_cli(capsys, "export", "--model", str(folder), "--output", str(converted))
    source = tmp_path / "input.txt"
    source.write_text("A man.\n")
    translate = ("translate", "--model", str(converted), str(source))
    (converted / CT2_MODEL).write_bytes(b"not a model")
    err = user_error(capsys, *translate)
    assert f"{converted / CT2_MODEL}: cannot load the CTranslate2 model" in err
    (converted / CT2_MODEL).unlink()
    err = user_error(capsys, *translate)
    assert f"{converted}: not an exported model folder (missing {CT2_MODEL})" in err
    assert capsys.readouterr().out == ""


def test_without_the_package_the_error_names_the_extra(tmp_path, capsys, folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import fails
    err = user_error(capsys, "export", "--model", str(folder), "--output", str(tmp_path / "out"))
    assert "the CTranslate2 engine needs ctranslate2: pip install 'nmt-pipeline[ct2]'" in err


def test_the_cpu_benchmark_scores_and_times_each_engine(tmp_path, folder):
    """`python -m benchmarks.cpu_engines`, run as a tool: BLEU, speed and settings per engine."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pairs = [(s, " ".join(s.split()[::-1])) for s in SOURCES]
    (prepared / "test.jsonl").write_bytes(jsonl_bytes(pairs))
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "benchmarks.cpu_engines", "--model", str(folder)]
    command += ["--prepared", str(prepared), "--split", "test", "--rounds", "2", "--threads", "1"]
    command += ["--batch-sizes", "4", "8", "--sweep-sentences", "8", "--out", str(out)]
    subprocess.run(
        command,
        cwd=REPO,
        check=True,
        capture_output=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    result = json.loads(out.read_text())
    engines = result["engines"]
    assert list(engines) == ["pytorch", "ct2_float32", "ct2_int8"]
    assert engines["ct2_float32"]["same_as_pytorch"] == len(SOURCES)
    assert engines["ct2_float32"]["bleu"] == engines["pytorch"]["bleu"]
    for row in engines.values():
        assert len(row["rounds"]) == 2 and row["sentences_per_sec"] > 0
        assert row["batch_size"] in (4, 8) and row["threads"] == 1
    assert engines["pytorch"]["speedup"] == 1.0
    assert (
        result["environment"]["ctranslate2"] and result["decoding"] == DecodingSettings().to_dict()
    )
