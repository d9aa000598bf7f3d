"""bf16-mixed where the CPU cannot run it: the train stage's check refuses it in one line.

On a CPU without bfloat16 instructions (no AVX-512, e.g. older AMD EPYC), oneDNN has no bfloat16
LSTM: training an LSTM under bf16 autocast dies in the first forward pass with "could not create
a primitive descriptor for the LSTM forward propagation primitive". The check probes a tiny LSTM;
here the probe is replaced by one that fails as there, so these tests run on any CPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from pipelines.core.errors import EXIT_USER_ERROR, PipelineError, run_main
from pipelines.training import low_precision
from pipelines.training.low_precision import (
    check_bf16_support,
    check_precision_support,
    train_device_type,
)
from tests.models.conftest import VARIANTS

ONEDNN_ERROR = (
    "could not create a primitive descriptor for the LSTM forward propagation primitive. "
    "Run workload with environment variable ONEDNN_VERBOSE=all to get additional diagnostic "
    "information."
)


@pytest.fixture
def cpu_without_bf16_lstm(monkeypatch) -> list[str]:
    """The probe fails as on a CPU without bfloat16 LSTM kernels; returns the probed devices."""
    probed: list[str] = []

    def probe(device_type: str) -> None:
        probed.append(device_type)
        raise RuntimeError(ONEDNN_ERROR)

    monkeypatch.setattr(low_precision, "probe_bf16_lstm", probe)
    return probed


@pytest.mark.parametrize("variant", ["lstm-none", "lstm-additive", "lstm-multiplicative"])
def test_an_lstm_in_bf16_on_such_a_cpu_is_refused_naming_the_key(cpu_without_bf16_lstm, variant):
    model = build_model(VARIANTS[variant], 20)
    with pytest.raises(PipelineError) as refused:
        check_bf16_support(model, "cpu")
    message = str(refused.value)
    assert message == (
        "train.precision: bf16-mixed: this CPU cannot run the LSTM in bfloat16 (oneDNN: could not "
        "create a primitive descriptor for the LSTM forward propagation primitive); "
        "use train.precision: 32-true"
    )
    assert cpu_without_bf16_lstm == ["cpu"]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v.startswith("lstm")])
def test_models_without_an_lstm_are_not_probed(cpu_without_bf16_lstm, variant):
    check_bf16_support(build_model(VARIANTS[variant], 20), "cpu")  # GRU: no oneDNN RNN kernel
    assert cpu_without_bf16_lstm == []


def test_only_the_cpu_is_probed(cpu_without_bf16_lstm):
    check_bf16_support(build_model(VARIANTS["lstm-none"], 20), "cuda")
    assert cpu_without_bf16_lstm == []


def test_the_stage_check_refuses_only_bf16_mixed_on_the_cpu(cpu_without_bf16_lstm):
    lstm = VARIANTS["lstm-additive"]
    check_precision_support("32-true", "cpu", lstm)
    check_precision_support("bf16-mixed", "cpu", VARIANTS["transformer"])
    assert cpu_without_bf16_lstm == []
    with pytest.raises(PipelineError, match=r"^train\.precision: bf16-mixed: "):
        check_precision_support("bf16-mixed", "cpu", lstm)
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError):
            check_precision_support("bf16-mixed", "auto", lstm)


def test_train_device_type_follows_lightnings_accelerator_names():
    assert train_device_type("cpu") == "cpu"
    assert train_device_type("gpu") == train_device_type("cuda") == "cuda"
    assert train_device_type("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_stage_reports_the_refusal_in_one_line_without_a_traceback(
    cpu_without_bf16_lstm, capsys
):
    @run_main
    def main() -> None:
        check_precision_support("bf16-mixed", "cpu", VARIANTS["lstm-none"])

    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: train.precision: bf16-mixed: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_the_real_probe_agrees_with_training_an_lstm_in_bf16_on_this_cpu():
    """Unpatched: the check refuses exactly where a bf16 autocast training step fails here."""
    torch.manual_seed(0)
    model = build_model(VARIANTS["lstm-additive"], 20).train()
    src, tgt = torch.randint(4, 20, (2, 5)), torch.randint(4, 20, (2, 4))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(src, tgt)
        F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten()).backward()
    except RuntimeError:
        with pytest.raises(PipelineError, match="cannot run the LSTM in bfloat16"):
            check_bf16_support(model, "cpu")
    else:
        check_bf16_support(model, "cpu")
