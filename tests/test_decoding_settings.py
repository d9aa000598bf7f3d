"""Decoding settings in one place: params, the model's decoding.json, `nmt translate`, pyfunc."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
import torch
import yaml

from models.config import ConfigError, from_dict
from pipelines import cli
from pipelines.commands import translate as translate_command
from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings, EvaluateParams, load_params
from pipelines.inference import pyfunc_model
from pipelines.inference.settings import (
    DECODING_FILE,
    read_settings,
    resolve_device,
    write_settings,
)
from pipelines.inference.translator import Translator
from tests.exported_model import SENTENCES, make_exported_folder
from tests.pipeline_helpers import REPO

RECORDED = DecodingSettings(beam_size=3, length_penalty=0.2, max_len_margin=4, batch_size=2)


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory):
    """An exported folder as the train stage writes it: no decoding.json."""
    return make_exported_folder(tmp_path_factory.mktemp("plain") / "transformer")


@pytest.fixture(scope="module")
def shipped_folder(tmp_path_factory):
    """An exported folder as a registered model ships it: with its decoding.json."""
    folder = make_exported_folder(tmp_path_factory.mktemp("shipped") / "transformer")
    write_settings(folder / DECODING_FILE, RECORDED)
    return folder


# --- DecodingSettings and EvaluateParams -------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("beam_size", 0, "evaluate.beam_size: must be >= 1"),
        ("length_penalty", -0.1, "evaluate.length_penalty: must be >= 0"),
        ("max_len_margin", 0, "evaluate.max_len_margin: must be >= 1"),
        ("batch_size", 0, "evaluate.batch_size: must be >= 1"),
        ("beam_size", 2.5, "evaluate.beam_size: expected an integer"),
        ("attention_examples", -1, "evaluate.attention_examples: must be >= 0"),
        ("device", "gpu", "evaluate.device: must be auto, cpu, cuda"),
        ("device", "cuda:x", "evaluate.device: must be auto, cpu, cuda"),
        ("length_penalty_grid", [1.0, 0.3, 1], "evaluate.length_penalty_grid: lists 1.0 more"),
        ("length_penalty_grid", [0.5, -1.0], "evaluate.length_penalty_grid: must be >= 0"),
        ("length_penalty_grid", 1.0, "evaluate.length_penalty_grid: expected a list"),
    ],
)
def test_validation_errors_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(EvaluateParams, {key: value}, prefix="evaluate")


def test_overrides_are_checked_and_none_keeps_the_setting():
    assert RECORDED.with_overrides(beam_size=None, batch_size=8) == DecodingSettings(
        beam_size=3, length_penalty=0.2, max_len_margin=4, batch_size=8
    )
    with pytest.raises(ConfigError, match=r"^beam_size: must be >= 1"):
        RECORDED.with_overrides(beam_size=0)
    with pytest.raises(ConfigError, match="sampling: unknown key"):
        RECORDED.with_overrides(sampling=True)


def test_evaluate_params_are_the_decoding_settings_plus_the_stage_keys():
    names = [f.name for f in fields(EvaluateParams)]
    assert names[:4] == [f.name for f in fields(DecodingSettings)]
    assert names[4:] == ["attention_examples", "device", "length_penalty_grid"]
    evaluate = load_params(REPO / "params.yaml").evaluate
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"]
    assert set(raw) == set(names), "params.yaml keeps every key of the evaluate section"
    assert evaluate.to_dict() == {f.name: raw[f.name] for f in fields(DecodingSettings)}
    assert type(evaluate.decoding()) is DecodingSettings


def test_gpu_profile_decodes_on_the_gpu_when_there_is_one():
    assert load_params(REPO / "profiles" / "gpu.yaml").evaluate.device == "auto"


def test_auto_device_is_cuda_when_available_else_cpu(plain_folder):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_params(REPO / "params.yaml").evaluate.device == "auto"
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"
    assert Translator.load(plain_folder, device="auto").device.type == expected


# --- decoding.json -----------------------------------------------------------------------------


def test_decoding_json_round_trips_into_the_translator(tmp_path, plain_folder, shipped_folder):
    evaluate = EvaluateParams(beam_size=2, attention_examples=7, device="cpu")
    write_settings(tmp_path / DECODING_FILE, evaluate)
    assert json.loads((tmp_path / DECODING_FILE).read_text()) == evaluate.to_dict()
    assert read_settings(tmp_path) == DecodingSettings(beam_size=2)
    assert read_settings(tmp_path / "elsewhere") is None

    shipped = Translator.load(shipped_folder)
    assert shipped.settings == RECORDED
    assert shipped.settings_file == shipped_folder / DECODING_FILE
    plain = Translator.load(plain_folder)
    assert plain.settings == DecodingSettings() and plain.settings_file is None


def test_translate_defaults_to_the_recorded_settings(shipped_folder):
    translator = Translator.load(shipped_folder)
    recorded = translator.translate(SENTENCES)
    assert recorded == translator.translate(SENTENCES, RECORDED)
    # Random weights decode to the length limit: the recorded margin is the one applied.
    longer = translator.translate(SENTENCES, RECORDED.with_overrides(max_len_margin=20))
    assert all(len(a) < len(b) for a, b in zip(recorded, longer, strict=True))


def test_a_bad_decoding_json_is_a_clear_error(tmp_path):
    folder = make_exported_folder(tmp_path / "model")
    (folder / DECODING_FILE).write_text('{"beam_size": 0}')
    with pytest.raises(PipelineError, match=r"decoding.json: beam_size: must be >= 1"):
        Translator.load(folder)


# --- nmt translate -----------------------------------------------------------------------------


@pytest.fixture
def decoded_with(monkeypatch):
    """The settings each Translator.translate call got, without decoding anything."""
    seen: list[DecodingSettings] = []

    def translate(self, sentences, settings=None, progress=False):
        seen.append(settings)
        return [sentence.upper() for sentence in sentences]

    monkeypatch.setattr(Translator, "translate", translate)
    return seen


def run_translate(tmp_path, capsys, folder, *flags: str) -> str:
    source = tmp_path / "input.txt"
    source.write_text("".join(f"{s}\n" for s in SENTENCES))
    cli.main(["translate", "--model", str(folder), *flags, str(source)])
    return capsys.readouterr().out


def make_project(root, **evaluate) -> None:
    """A folder that looks like the project: dvc.yaml and a params.yaml with `evaluate`."""
    root.mkdir()
    (root / "dvc.yaml").write_text("stages: {}\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(evaluate)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_nmt_translate_defaults_to_the_model_settings(
    tmp_path, capsys, monkeypatch, shipped_folder, decoded_with
):
    monkeypatch.chdir(tmp_path)
    out = run_translate(tmp_path, capsys, shipped_folder)
    assert out.splitlines() == [s.upper() for s in SENTENCES]
    # Inside a project, the model's own settings still win over params.yaml.
    make_project(tmp_path / "project", beam_size=9)
    monkeypatch.chdir(tmp_path / "project")
    run_translate(tmp_path, capsys, shipped_folder)
    assert decoded_with == [RECORDED] * 4  # 3 lines in batches of 2: 2 calls a run


def test_flags_override_the_model_settings(
    tmp_path, capsys, monkeypatch, shipped_folder, decoded_with
):
    monkeypatch.chdir(tmp_path)
    run_translate(tmp_path, capsys, shipped_folder, "--beam-size", "1", "--batch-size", "5")
    run_translate(tmp_path, capsys, shipped_folder, "--length-penalty", "1.5")
    assert decoded_with == [
        RECORDED.with_overrides(beam_size=1, batch_size=5),
        *[RECORDED.with_overrides(length_penalty=1.5)] * 2,  # 3 lines in batches of 2
    ]


def test_a_folder_without_settings_uses_the_project_params_else_the_defaults(
    tmp_path, capsys, monkeypatch, plain_folder, decoded_with
):
    monkeypatch.chdir(tmp_path)  # no dvc.yaml here or above: not in a project
    run_translate(tmp_path, capsys, plain_folder)
    project = tmp_path / "project"
    make_project(project, beam_size=4, length_penalty=1.0, max_len_margin=11, batch_size=3)
    (project / "sub").mkdir()
    monkeypatch.chdir(project / "sub")
    run_translate(tmp_path, capsys, plain_folder)
    run_translate(tmp_path, capsys, plain_folder, "--beam-size", "2")
    in_project = DecodingSettings(beam_size=4, length_penalty=1.0, max_len_margin=11, batch_size=3)
    assert decoded_with == [
        DecodingSettings(),
        in_project,
        in_project.with_overrides(beam_size=2),
    ]


def test_a_broken_project_evaluate_section_names_the_file_and_key(tmp_path, monkeypatch):
    make_project(tmp_path / "project", beam_size=0)
    monkeypatch.chdir(tmp_path / "project")
    with pytest.raises(PipelineError, match=r"params.yaml: evaluate.beam_size: must be >= 1"):
        translate_command.project_settings()


def test_nmt_translate_really_decodes_with_the_recorded_settings(
    tmp_path, capsys, monkeypatch, shipped_folder
):
    monkeypatch.chdir(tmp_path)
    expected = Translator.load(shipped_folder).translate(SENTENCES, RECORDED)
    assert run_translate(tmp_path, capsys, shipped_folder).splitlines() == expected


def test_help_says_where_the_defaults_come_from(capsys):
    with pytest.raises(SystemExit):
        cli.main(["translate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("decoding.json", "params.yaml", "default: the model's settings"):
        assert words in text


# --- the pyfunc model --------------------------------------------------------------------------


def test_pyfunc_params_override_the_recorded_settings(shipped_folder):
    model = pyfunc_model.TranslatorModel()
    model.translator = Translator.load(shipped_folder)
    assert model.predict(None, SENTENCES) == model.translator.translate(SENTENCES, RECORDED)
    fast = RECORDED.with_overrides(beam_size=1, max_len_margin=2)
    params = {"beam_size": np.int64(1), "max_len_margin": 2}
    assert model.predict(None, SENTENCES, params=params) == model.translator.translate(
        SENTENCES, fast
    )
    with pytest.raises(ValueError, match="beam_size: must be >= 1"):
        model.predict(None, SENTENCES, params={"beam_size": 0})


def test_logged_model_ships_its_settings_and_the_code_a_translator_needs(
    tmp_path, plain_folder, monkeypatch
):
    """Log, load back in this process (its own code), predict; signature defaults = settings."""
    import mlflow

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            info = pyfunc_model.log_pyfunc_model(
                plain_folder,
                "translator",
                SENTENCES[:2],
                decoding=EvaluateParams(**RECORDED.to_dict(), device="cpu"),
            )
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        local = tmp_path / "download"
        mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(local))
    finally:
        mlflow.set_tracking_uri(previous)
    params = {p.name: p.default for p in loaded.metadata.signature.params}
    assert params == RECORDED.to_dict()
    assert loaded.metadata.metadata["decoding"] == RECORDED.to_dict()
    expected = Translator.load(plain_folder).translate(SENTENCES, RECORDED)
    assert loaded.predict(SENTENCES) == expected
    fast = RECORDED.with_overrides(beam_size=1)
    assert loaded.predict(SENTENCES, params={"beam_size": 1}) == Translator.load(
        plain_folder
    ).translate(SENTENCES, fast)
    shipped = local / "artifacts" / plain_folder.name
    assert read_settings(shipped) == RECORDED
    assert not (plain_folder / DECODING_FILE).exists(), "the exported folder is left as it was"
    code = local / "code" / "pipelines"
    assert sorted(p.name for p in code.iterdir()) == ["__init__.py", "core", "data", "inference"]
