"""The benchmark scripts run on CPU against the tiny pipeline's outputs (the GPU numbers come
from the same code on a GPU; see benchmarks/README.md)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from benchmarks import bench
from tests.pipeline_helpers import SHARED, write_params

pytestmark = pytest.mark.slow

if not (SHARED / "dvc-remote").exists():
    pytest.skip("../shared/dvc-remote is not beside the checkout", allow_module_level=True)


def _run(
    kind: str,
    arch: str,
    round_: int,
    tokens_per_sec: float,
    compiled: bool = False,
    copies: bool | None = None,
):
    run = {
        "kind": kind,
        "arch": arch,
        "round": round_,
        "compiled": compiled,
        "tokens_per_sec": tokens_per_sec,
    }
    if copies is not None:  # measured in bf16 autocast, with or without bf16 weight copies
        run.update(autocast_bf16=True, low_precision_weights=copies)
    return run


def test_speedups_pair_each_round_with_its_own_marian_run():
    runs = [
        _run("ours", "base", 0, 300.0),
        _run("marian", "base", 0, 200.0),
        _run("ours", "base", 1, 220.0),
        _run("marian", "base", 1, 200.0),
        _run("ours", "base", 2, 260.0),
        {"kind": "marian", "arch": "base", "round": 2, "skipped": "time budget"},
        _run("ours", "other", 0, 999.0),  # no Marian run of this architecture
        _run("ours", "base", 0, 400.0, compiled=True),
        _run("ours", "base", 1, 180.0, copies=False),
        _run("ours", "base", 1, 240.0, copies=True),
    ]
    result = bench.speedups(runs)
    assert result["speedup_vs_marian_per_round"] == {
        "ours_eager_vs_marian_eager": [1.5, 1.1, 1.2],
        "ours_compiled_vs_marian_eager": [2.0],
        "ours_eager_without_weight_copies_vs_marian_eager": [0.9],
    }
    assert result["speedup_vs_marian"] == {
        "ours_eager_vs_marian_eager": 1.2,
        "ours_compiled_vs_marian_eager": 2.0,
        "ours_eager_without_weight_copies_vs_marian_eager": 0.9,
    }


def _throughput(
    tiny_pipeline, folder, archs: list[str], steps: int, *extra: str, precision: str = ""
):
    """`bench throughput` on CPU over the tiny pipeline's tokenized data, 2 rounds, no Marian;
    returns the JSON file it wrote."""
    params = dict(tiny_pipeline.params)
    if precision:
        params["train"] = {**params["train"], "precision": precision}
    write_params(folder, params)
    out = folder / "throughput.json"
    bench.main(
        ["throughput", "--params", str(folder / "params.yaml"),
         "--tokenized", str(tiny_pipeline.repo / "data" / "tokenized"), "--archs", *archs,
         "--marian", "", "--warmup", "1", "--steps", str(steps), "--repeats", "1",
         "--rounds", "2", "--device", "cpu", "--out", str(out), *extra]
    )  # fmt: skip
    return out


def test_throughput_measures_every_round_and_writes_the_table(tiny_pipeline, tmp_path, capsys):
    out = _throughput(tiny_pipeline, tmp_path, ["transformer", "lstm_additive"], 2)
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert [(r["name"], r["round"]) for r in runs] == [
        ("transformer", 0),
        ("lstm_additive", 0),
        ("transformer", 1),
        ("lstm_additive", 1),
    ]
    for run in runs:
        assert run["tokens_per_sec"] > 0 and run["loss_finite"]
        assert run["src_tokens"] > 0 and run["tgt_tokens"] > 0
        assert run["steps"] == 2 and len(run["seconds_per_repeat"]) == 1
    assert 0.0 <= result["padding"]["padding_fraction"] < 0.5
    assert result["sdpa_cudnn_enabled"] is False  # the params' train.cudnn_attention
    assert result["speedup_vs_marian"] == {}
    table = capsys.readouterr().out
    assert "transformer (round 2)" in table and "lstm_additive" in table


def test_decode_reports_batched_and_unbatched_speed(tiny_pipeline, tmp_path):
    repo = tiny_pipeline.repo
    out = tmp_path / "decode.json"
    bench.main(
        ["decode", "--model", str(repo / "artifacts" / "transformer"),
         "--prepared", str(repo / "data" / "prepared"), "--beam", "2", "--batch-size", "8",
         "--unbatched-sentences", "3", "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    batched, single = result["runs"]
    assert batched["batch_size"] == 8 and batched["sentences"] > 3
    assert single["batch_size"] == 1 and single["sentences"] == 3
    assert batched["sentences_per_sec"] > 0 and single["sentences_per_sec"] > 0
    assert result["beam_size"] == 2


def test_report_gathers_time_to_bleu_of_finished_runs(tiny_pipeline, tmp_path):
    out = tmp_path / "report.json"
    bench.main(["report", str(tiny_pipeline.repo.parent), "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    job = tiny_pipeline.repo.name
    architectures = tiny_pipeline.params["architectures"]
    assert sorted(runs) == sorted(f"{job}/{arch}" for arch in architectures)
    for arch in architectures:
        entry = runs[f"{job}/{arch}"]
        assert entry["training"]["arch"] == arch
        assert entry["time_to_bleu"]["epochs"] == 1
        assert set(entry["test"]) == set(tiny_pipeline.params["data"]["test_splits"])


def test_isolate_measures_each_job_in_its_own_process(tiny_pipeline, tmp_path):
    out = _throughput(tiny_pipeline, tmp_path, ["transformer"], 1, "--isolate")
    result = json.loads(out.read_text())
    assert result["isolated"] is True
    assert [(r["name"], r["round"], r["isolated"]) for r in result["runs"]] == [
        ("transformer", 0, True),
        ("transformer", 1, True),
    ]
    assert all(r["tokens_per_sec"] > 0 and r["loss_finite"] for r in result["runs"])


def test_mlflow_flag_logs_one_run_with_figures_and_the_json(tiny_pipeline, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts go under ./mlruns of the folder that has no dvc.yaml
    out = _throughput(tiny_pipeline, tmp_path, ["transformer"], 1, "--mlflow")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("benchmarks")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["benchmark"] == "throughput" and run.data.tags["git.commit"]
    assert run.data.params["batch_tokens"] == str(tiny_pipeline.params["train"]["batch_tokens"])
    assert run.data.params["env.torch"].startswith("2.")
    assert run.data.params["low_precision_weights"] == "on"  # train.low_precision_weights
    history = client.get_metric_history(run.info.run_id, "transformer/tokens_per_sec")
    measured = json.loads(out.read_text())["runs"]
    assert sorted((m.step, m.value) for m in history) == [
        (r["round"], r["tokens_per_sec"]) for r in measured
    ]
    (artifact,) = client.list_artifacts(run.info.run_id)
    assert artifact.path == "throughput.json"


def test_bf16_runs_measure_ours_with_and_without_weight_copies(tiny_pipeline, tmp_path, capsys):
    out = _throughput(
        tiny_pipeline,
        tmp_path,
        ["transformer"],
        1,
        "--low-precision-weights",
        "both",
        precision="bf16-mixed",
    )
    runs = json.loads(out.read_text())["runs"]
    assert [(r["round"], r["low_precision_weights"]) for r in runs] == [
        (0, True),
        (0, False),
        (1, True),
        (1, False),
    ]
    assert all(r["autocast_bf16"] and r["loss_finite"] for r in runs)
    assert "transformer -copies (round 2)" in capsys.readouterr().out


def test_job_spec_round_trips():
    job = bench.Job("transformer_base", "ours", compiled=False, copies=True)
    assert job.spec() == "transformer_base,ours,eager,copies"
    assert bench.Job.parse(job.spec()) == job
    assert bench.Job.parse("x,marian,compiled,casts") == bench.Job("x", "marian", True, False)
    graphed = bench.Job("transformer_base", "ours", graphed=True)
    assert graphed.spec() == "transformer_base,ours,graphed,casts"
    assert bench.Job.parse(graphed.spec()) == graphed
    with pytest.raises(ValueError, match="eager\\|compiled\\|graphed"):
        bench.Job.parse("x,ours,fast,casts")


def test_planned_jobs_put_every_variant_of_ours_and_marian_in_each_round():
    args = SimpleNamespace(rounds=2, marian="base", compile=None, compile_marian=False)
    jobs = bench.planned_jobs(args, ["base"], copies=[True, False], graphs=[True, False])
    round_0 = [job for round_, job in jobs if round_ == 0]
    assert [job.spec() for job in round_0] == [
        "base,ours,graphed,casts",
        "base,ours,eager,copies",
        "base,ours,eager,casts",
        "base,marian,eager,casts",
    ]
    assert [job for round_, job in jobs if round_ == 1] == round_0


def test_speedup_of_graphed_runs_has_its_own_key():
    runs = [
        {**_run("ours", "base", 0, 300.0), "cuda_graphs": True},
        _run("ours", "base", 0, 240.0, copies=True),
        _run("marian", "base", 0, 200.0),
    ]
    assert bench.speedups(runs)["speedup_vs_marian"] == {
        "ours_cuda_graphs_vs_marian_eager": 1.5,
        "ours_eager_vs_marian_eager": 1.2,
    }
    assert bench.run_label({**runs[0], "name": "base"}) == "base +graphs"
