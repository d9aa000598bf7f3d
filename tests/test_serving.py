"""`nmt serve`: the registered champion behind `mlflow models serve`, asked over real HTTP.

A tiny translator (random weights, tests.exported_model) is registered in a SQLite store of its
own and served as a user would serve one (``nmt serve --model models:/...@champion``); answers
to /invocations must equal the pyfunc model's predict on the same input.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

import pytest

from pipelines import cli
from pipelines.commands import serve as serve_command
from pipelines.core.errors import EXIT_USER_ERROR, PipelineError
from pipelines.tracking import registry, runs
from tests.exported_model import make_exported_folder
from tests.pipeline_helpers import REPO
from tests.server_helpers import free_port, running_server

NAME = "nmt-translator"
CHAMPION_URI = f"models:/{NAME}@{registry.CHAMPION}"
ROWS = ["A man rides a red bike.", "", "Two dogs run in the snow.", "   "]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store whose `champion` is a tiny translator; MLFLOW_TRACKING_URI points at it."""
    import mlflow

    root = tmp_path_factory.mktemp("serve-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    previous = mlflow.get_tracking_uri()
    client = runs.connect()
    experiment = client.create_experiment("serve", artifact_location=(root / "art").as_uri())
    run = client.create_run(experiment, tags={runs.ARCH_TAG: "transformer"})
    client.set_terminated(run.info.run_id)
    folder = make_exported_folder(root / "transformer")
    version = registry.log_and_register(run.info.run_id, folder, NAME, client=client)
    client.set_registered_model_alias(NAME, registry.CHAMPION, version)
    yield uri
    mlflow.set_tracking_uri(previous)
    patch.undo()


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    """`nmt serve` on a free loopback port; yields its base URL, stopped by PID afterwards."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    folder = tmp_path_factory.mktemp("serve")
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--model", CHAMPION_URI]
    with running_server(
        [*command, "--port", str(port)],
        cwd=folder,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
        ready_url=f"{base}/ping",
        log_file=folder / "server.log",
    ):
        yield base


@pytest.fixture(scope="module")
def champion(store):
    import mlflow

    return mlflow.pyfunc.load_model(CHAMPION_URI)


def invoke(base: str, body: dict) -> tuple[int, dict]:
    """POST `body` to /invocations; the HTTP status and the JSON answer."""
    request = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": ROWS},
        {"dataframe_split": {"columns": ["source"], "data": [[row] for row in ROWS]}},
        {"dataframe_records": [{"source": row} for row in ROWS]},
    ],
    ids=["inputs", "dataframe_split", "dataframe_records"],
)
def test_served_champion_translates_each_row_as_pyfunc_predict(served, champion, body):
    status, answer = invoke(served, body)
    assert status == 200, answer
    predictions = answer["predictions"]
    assert predictions == champion.predict(ROWS)
    assert len(predictions) == len(ROWS)
    assert predictions[1] == predictions[3] == ""  # empty and blank rows give empty translations
    assert predictions[0] and predictions[2]


def test_request_params_override_the_recorded_decoding_settings(served, champion):
    status, answer = invoke(served, {"inputs": ROWS[:1], "params": {"beam_size": 1}})
    assert status == 200, answer
    assert answer["predictions"] == champion.predict(ROWS[:1], params={"beam_size": 1})
    status, answer = invoke(served, {"inputs": ROWS[:1], "params": {"beam_size": 0}})
    # MLflow answers with a generic message; the model's own one-line error ends the trace.
    assert status == 400 and answer["error_code"] == "BAD_REQUEST", answer
    assert answer["stack_trace"].rstrip().endswith("ConfigError: beam_size: must be >= 1")


def test_a_request_without_rows_is_refused_with_mlflow_message(served):
    status, answer = invoke(served, {"sentences": ROWS})
    assert status == 400
    assert "exactly one of the input fields" in answer["message"]


def test_serve_runs_mlflow_models_serve_locally_on_the_project_store(store):
    args = cli.build_parser().parse_args(["serve", "--model", CHAMPION_URI])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 5001, 1)
    command, env = serve_command.serve_command(args.model, args.host, args.port, args.workers)
    assert command[1:5] == ["-m", "mlflow", "models", "serve"]
    assert command[command.index("--model-uri") + 1] == CHAMPION_URI
    assert command[command.index("--env-manager") + 1] == "local"  # no virtualenv, no network
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert env["MLFLOW_TRACKING_URI"] == store


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (f"models:/{NAME}@no-such-alias", "alias no-such-alias not found"),
        ("models:/no-such-model@champion", "name=no-such-model not found"),
        ("runs:/0123456789abcdef/translator", "Run with id=0123456789abcdef not found"),
    ],
)
def test_an_unknown_model_is_a_one_line_error_naming_it(store, capsys, model, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--model", model])
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model}: cannot be fetched") and err.count("\n") == 1, err
    assert message in err


def test_serve_without_a_store_does_not_create_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    with pytest.raises(PipelineError, match=f"^{CHAMPION_URI}: no MLflow store at "):
        serve_command.serve_command(CHAMPION_URI, "127.0.0.1", 5001, 1)
    assert not (tmp_path / "mlruns").exists()
    with pytest.raises(PipelineError, match="--workers: must be >= 1"):
        serve_command.serve_command(CHAMPION_URI, "127.0.0.1", 5001, 0)


def test_a_model_that_is_not_a_translator_is_refused(tmp_path):
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "echo", python_model=Echo(), pip_requirements=[])
    with pytest.raises(PipelineError, match="echo: not a translator logged by"):
        registry.translator_model_info(str(tmp_path / "echo"))
