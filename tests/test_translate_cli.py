"""`nmt translate`: input checks in-process, then the real command on the tiny pipeline's models.

Streaming, n-best, normalization and damaged folders on a fast exported folder:
test_translate_streaming.py.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys

import pytest

from pipelines import cli
from pipelines.commands import ui as ui_command
from pipelines.core.errors import EXIT_USER_ERROR, PipelineError
from pipelines.inference import streaming
from tests.pipeline_helpers import SHARED, project_env, trained


def write(tmp_path, data: bytes):
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    return str(path)


def read_lines(path: str) -> list[str]:
    stream, name = streaming.open_input(path)
    with stream:
        return list(streaming.iter_lines(stream, name))


def test_lines_end_at_newline_only(tmp_path):
    # \u2028 and \x0c would split a line under str.splitlines and shift every later output line.
    data = "Hello\u2028world\r\nA dog\x0cruns.\nLast line".encode()
    assert read_lines(write(tmp_path, data)) == ["Hello\u2028world", "A dog\x0cruns.", "Last line"]


def test_byte_order_mark_is_not_part_of_the_first_sentence(tmp_path):
    assert read_lines(write(tmp_path, b"\xef\xbb\xbfA cat.\n")) == ["A cat."]


def test_empty_and_blank_lines_are_lines(tmp_path):
    assert read_lines(write(tmp_path, b"")) == []
    assert read_lines(write(tmp_path, b"\n")) == [""]
    assert read_lines(write(tmp_path, b"One.\n  \n\r\nTwo.\n")) == ["One.", "  ", "", "Two."]


def test_lines_are_decoded_as_they_are_read_and_bad_bytes_name_the_line():
    stream = io.BytesIO(b"One.\nTwo \xff\xfe.\nThree.\n")
    lines = streaming.iter_lines(stream, "input.txt")
    assert next(lines) == "One."
    with pytest.raises(PipelineError, match=r"^input.txt:2: invalid UTF-8$"):
        next(lines)


@pytest.mark.parametrize(
    ("data", "count"),
    [(b"", 0), (b"\n", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"x" * (3 << 20) + b"\ny", 2)],
)
def test_a_regular_file_is_counted_without_moving_its_position(tmp_path, data, count):
    with open(write(tmp_path, data), "rb") as stream:
        assert streaming.count_lines(stream) == count
        assert stream.tell() == 0
    read, _ = os.pipe()
    with os.fdopen(read, "rb") as pipe:
        assert streaming.count_lines(pipe) is None  # a pipe is read once, not counted


def run_main(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_model_path_is_a_one_line_error(tmp_path, capsys):
    source = write(tmp_path, b"A cat.\n")
    err = run_main(capsys, "translate", "--model", str(tmp_path / "nowhere"), source)
    assert "not an exported model folder" in err


def test_missing_input_file_is_a_one_line_error(tmp_path, capsys):
    err = run_main(capsys, "translate", "--model", str(tmp_path), str(tmp_path / "missing.txt"))
    assert "missing.txt: no such file" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--beam-size", "0", "--beam-size: must be >= 1"),
        ("--batch-size", "0", "--batch-size: must be >= 1"),
        ("--n-best", "0", "--n-best: must be >= 1"),
        ("--device", "toaster", "--device toaster: not a torch device"),
        ("--device", "cuda:99", "--device cuda:99"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, option, value, message):
    source = write(tmp_path, b"A cat.\n")
    err = run_main(capsys, "translate", "--model", str(tmp_path), option, value, source)
    assert message in err


def test_registry_uri_without_a_store_does_not_create_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    source = write(tmp_path, b"A cat.\n")
    err = run_main(capsys, "translate", "--model", "models:/nmt-translator@champion", source)
    assert "no MLflow store" in err
    assert not (tmp_path / "mlruns").exists()


def test_ui_binds_loopback_by_default_and_disables_job_workers(tmp_path, monkeypatch):
    store = tmp_path / "mlruns" / "mlflow.db"
    store.parent.mkdir()
    store.touch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    args = cli.build_parser().parse_args(["ui"])
    assert args.host == "127.0.0.1"
    command, env = ui_command.ui_command(args.host, args.port)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{store}"
    assert command[command.index("--workers") + 1] == "1"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_ui_refuses_to_start_on_a_missing_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    with pytest.raises(PipelineError, match="no MLflow store"):
        ui_command.ui_command("127.0.0.1", 5000)


# --- the real command, as a subprocess, on the tiny pipeline's models -------------------------

needs_pipeline = pytest.mark.skipif(
    not (SHARED / "dvc-remote").exists(), reason="../shared/dvc-remote is not beside the checkout"
)


def translate(repo, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "translate", *args],
        cwd=repo,
        env=project_env(repo),
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def source_sentences(repo, count: int) -> list[str]:
    with open(repo / "data" / "prepared" / "test_2016_flickr.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["src"] for line in itertools.islice(handle, count)]


@pytest.fixture(scope="module")
def champion(tiny_pipeline):
    """(registry URI, the champion's exported folder) of the tiny pipeline."""
    from mlflow.tracking import MlflowClient

    repo = tiny_pipeline.repo
    name = tiny_pipeline.params["tracking"]["registered_model"]
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    version = client.get_model_version_by_alias(name, "champion")
    return f"models:/{name}@champion", repo / "artifacts" / trained(version.tags["architecture"])


@pytest.mark.slow
@needs_pipeline
def test_registry_champion_translates_like_its_exported_folder(tiny_pipeline, champion):
    repo = tiny_pipeline.repo
    uri, folder = champion
    sentences = source_sentences(repo, 12)
    stdin = "".join(f"{s}\n" for s in sentences).encode()
    from_registry = translate(repo, "--model", uri, "--beam-size", "3", stdin=stdin)
    assert from_registry.returncode == 0, from_registry.stderr.decode()
    (repo / "tmp_input.txt").write_bytes(stdin)
    try:
        from_folder = translate(repo, "--model", str(folder), "--beam-size", "3", "tmp_input.txt")
    finally:
        (repo / "tmp_input.txt").unlink()
    assert from_folder.returncode == 0, from_folder.stderr.decode()
    lines = from_registry.stdout.decode().split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(sentences)
    assert from_registry.stdout == from_folder.stdout


@pytest.mark.slow
@needs_pipeline
def test_without_flags_both_decode_with_the_evaluated_settings(tiny_pipeline, champion):
    """The registered model by its decoding.json, the plain folder by the project's params.yaml."""
    from pipelines.core.params import load_params
    from pipelines.inference.settings import read_settings
    from pipelines.inference.translator import Translator

    repo = tiny_pipeline.repo
    uri, folder = champion
    sentences = source_sentences(repo, 12)
    stdin = "".join(f"{s}\n" for s in sentences).encode()
    from_registry = translate(repo, "--model", uri, stdin=stdin)
    from_folder = translate(repo, "--model", str(folder), stdin=stdin)
    assert from_registry.returncode == from_folder.returncode == 0, from_registry.stderr.decode()
    assert b"decoding with the model's decoding.json" in from_registry.stderr
    assert b"decoding with params.yaml evaluate" in from_folder.stderr
    # The registered model ships the settings its test sets were decoded with (the length
    # penalty chosen on validation); a plain folder decodes with params.yaml as written.
    shipped = read_settings(repo / "metrics" / f"{folder.name}.decoding.json")
    expected = Translator.load(folder).translate(sentences, shipped)
    assert from_registry.stdout.decode().splitlines() == expected
    settings = load_params(repo / "params.yaml").evaluate
    expected = Translator.load(folder).translate(sentences, settings)
    assert from_folder.stdout.decode().splitlines() == expected


@pytest.mark.slow
@needs_pipeline
def test_progress_goes_to_stderr_and_output_stays_clean(tiny_pipeline, champion):
    _, folder = champion
    repo = tiny_pipeline.repo
    sentences = source_sentences(repo, 6)
    (repo / "tmp_input.txt").write_text("".join(f"{s}\n" for s in sentences), encoding="utf-8")
    args = ("--model", str(folder), "--beam-size", "1", "--batch-size", "2", "tmp_input.txt")
    try:
        quiet = translate(repo, *args)
        shown = translate(repo, *args, "--progress-threshold", "1")
    finally:
        (repo / "tmp_input.txt").unlink()
    assert quiet.returncode == shown.returncode == 0
    assert b"translating" not in quiet.stderr
    assert b"translating" in shown.stderr and b"6/6" in shown.stderr  # lines of a counted file
    assert shown.stdout == quiet.stdout


@pytest.mark.slow
@needs_pipeline
@pytest.mark.parametrize(
    ("stdin", "model", "message"),
    [
        (b"A dog.\n\xc3\x28\n", None, b"error: <stdin>:2: invalid UTF-8\n"),
        (b"A dog.\n", "artifacts/no_such_arch", b"not an exported model folder"),
        (b"A dog.\n", "models:/no-such-model@champion", b"no-such-model@champion: cannot be"),
    ],
)
def test_malformed_input_exits_2_without_traceback(tiny_pipeline, champion, stdin, model, message):
    done = translate(tiny_pipeline.repo, "--model", model or str(champion[1]), stdin=stdin)
    assert done.returncode == EXIT_USER_ERROR
    assert message in done.stderr
    assert b"Traceback" not in done.stderr
    assert done.stdout == b""


@pytest.mark.slow
@needs_pipeline
def test_empty_lines_and_empty_input_keep_the_line_alignment(tiny_pipeline, champion):
    _, folder = champion
    sentences = source_sentences(tiny_pipeline.repo, 2)
    stdin = f"{sentences[0]}\n\n  \n{sentences[1]}\n".encode()
    done = translate(tiny_pipeline.repo, "--model", str(folder), stdin=stdin)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().split("\n")
    assert len(lines) == 5 and lines[1:3] == ["", ""] and lines[4] == ""
    nothing = translate(tiny_pipeline.repo, "--model", str(folder), stdin=b"")
    assert nothing.returncode == 0 and nothing.stdout == b""
