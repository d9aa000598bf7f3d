"""Bad `study` params stop the stage before any work: one `error:` line naming the key."""

from __future__ import annotations

import pytest
import yaml

from models.config import ConfigError, from_dict
from pipelines.core.study_params import MODEL_MAX_LEN, STUDY_PARTS, StudyParams
from pipelines.stages import study as study_stage


def study_params(**values) -> StudyParams:
    return from_dict(StudyParams, values, prefix="study")


def test_the_defaults_are_valid_and_run_every_part():
    assert study_params().parts == list(STUDY_PARTS)
    assert study_params(parts=["cost"], lengths=[16, MODEL_MAX_LEN]).lengths[-1] == 1024


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"parts": ["cost", "bogus"]}, "study.parts[1]: must be one of 'cost' | 'path'"),
        ({"parts": []}, "study.parts: needs at least one part"),
        ({"parts": ["cost", "cost"]}, "study.parts: lists a part twice"),
        ({"lengths": []}, "study.lengths: needs at least one length"),
        ({"lengths": [16, 2048]}, "study.lengths: 2048 is above the models' maximum length 1024"),
        ({"lengths": [1]}, "study.lengths: 1 is below 2 tokens"),
        ({"synthetic_max_length": 1024}, "study.synthetic_max_length: 1024 + EOS is above"),
        ({"head_counts": [1, 3]}, "study.head_counts: 3 heads do not divide d_model 64"),
        ({"n_heads": 5}, "study.n_heads: 5 heads do not divide d_model 64"),
        ({"kernel_size": 4}, "study.kernel_size: must be odd"),
        ({"steps": 0}, "study.steps: must be > 0"),
        ({"vocab_size": 4}, "study.vocab_size: must leave words beside the 4 reserved ids"),
        ({"device": "tpu"}, "study.device: must be auto, cpu, cuda or cuda:<index>"),
        ({"batch_tokens": 50}, "study.batch_tokens: must hold one synthetic sequence"),
        ({"lenghts": [16]}, "study.lenghts: unknown key"),
    ],
)
def test_bad_study_params_name_the_key(values, message):
    with pytest.raises(ConfigError) as raised:
        study_params(**values)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"parts": ["cost", "speed"]}, "error: study.parts[1]: must be one of"),
        ({"lengths": []}, "error: study.lengths: needs at least one length"),
        ({"lengths": [4096]}, "error: study.lengths: 4096 is above the models' maximum length"),
    ],
)
def test_the_stage_stops_with_one_line_before_any_work(
    tmp_path, monkeypatch, capsys, study, message
):
    params = {
        "architectures": ["transformer"],
        "models": {"transformer": {"model": {"family": "transformer"}}},
        "study": study,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        study_stage.main(["--params", "params.yaml", "--no-tracking"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "reports").exists()
