"""The benchmark's command line (``python -m benchmarks.bench``) on CPU against the tiny pipeline's
outputs: the JSON files, the printed table and the MLflow run it writes. The GPU numbers come from
the same code on a GPU (see benchmarks/README.md). No benchmark code is imported here: the
benchmark is a tool run from the outside, and MarianMTModel a stand-in written for the run."""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.pipeline_helpers import REPO, SHARED, TRANSFORMER, trained, write_params

pytestmark = pytest.mark.slow

if not (SHARED / "dvc-remote").exists():
    pytest.skip("../shared/dvc-remote is not beside the checkout", allow_module_level=True)

# A stand-in for Hugging Face `transformers` (not installed for the tests): a MarianMTModel with
# the attributes and call the benchmark uses, tiny, so Marian runs and speed-ups run on CPU.
FAKE_TRANSFORMERS = """
from types import SimpleNamespace

import torch
from torch import nn

__version__ = "0+stand-in"


class MarianConfig(SimpleNamespace):
    pass


class MarianMTModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        d_model = config.d_model
        self.model = nn.Module()
        self.model.shared = nn.Embedding(config.vocab_size, d_model)
        self.model.encoder, self.model.decoder = nn.Module(), nn.Module()
        self.model.encoder.layers = nn.ModuleList(
            nn.Linear(d_model, d_model) for _ in range(config.encoder_layers)
        )
        self.model.decoder.layers = nn.ModuleList(
            nn.Linear(d_model, d_model) for _ in range(config.decoder_layers)
        )
        self.lm_head = nn.Linear(d_model, config.vocab_size, bias=False)

    @classmethod
    def _from_config(cls, config, attn_implementation):
        config._attn_implementation = attn_implementation
        return cls(config)

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        memory = self.model.shared(input_ids) * attention_mask.unsqueeze(-1)
        for layer in self.model.encoder.layers:
            memory = torch.relu(layer(memory))
        x = self.model.shared(decoder_input_ids) + memory.mean(dim=1, keepdim=True)
        for layer in self.model.decoder.layers:
            x = torch.relu(layer(x))
        return SimpleNamespace(logits=self.lm_head(x))
"""


def bench(
    *args: str, cwd: Path = REPO, marian: Path | None = None, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    """`python -m benchmarks.bench ARGS` in `cwd`; with `marian`, a folder holding the stand-in
    `transformers` package, put first on the path."""
    paths = [str(marian)] if marian else []
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environ.update(env, PYTHONPATH=os.pathsep.join([*paths, str(REPO)]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", *args],
        cwd=cwd, env=environ, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"bench {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done


@pytest.fixture
def fake_transformers(tmp_path) -> Path:
    folder = tmp_path / "stand-ins"
    (folder / "transformers").mkdir(parents=True)
    (folder / "transformers" / "__init__.py").write_text(FAKE_TRANSFORMERS, encoding="utf-8")
    return folder


def throughput(
    tiny_pipeline, folder: Path, archs: list[str], *extra: str, precision: str = "", **kwargs: Any
) -> tuple[dict[str, Any], str]:
    """`bench throughput` on CPU over the tiny pipeline's tokenized data, one step after one of
    warm-up, 2 rounds unless `extra` says otherwise; the Transformer post-LayerNorm, as Marian.
    Returns the JSON it wrote and the table it printed."""
    params = copy.deepcopy(tiny_pipeline.params)
    params["models"]["transformer"]["model"]["norm"] = "post"
    if precision:
        params["train"]["precision"] = precision
    write_params(folder, params)
    out = folder / "throughput.json"
    done = bench(
        "throughput", "--params", str(folder / "params.yaml"),
        "--tokenized", str(tiny_pipeline.repo / "data" / "tokenized"), "--archs", *archs,
        "--warmup", "1", "--steps", "1", "--repeats", "1", "--rounds", "2", "--device", "cpu",
        "--out", str(out), *extra, **kwargs,
    )  # fmt: skip
    return json.loads(out.read_text()), done.stdout


def test_throughput_measures_every_round_and_writes_the_table(tiny_pipeline, tmp_path):
    result, table = throughput(
        tiny_pipeline, tmp_path, ["transformer", "lstm_additive"], "--steps", "2", "--marian", ""
    )
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
        # The sided counts leave the embeddings out; the output projection is the tied one.
        assert 0 < run["encoder_parameters"] < run["decoder_parameters"] < run["parameters"]
    assert 0.0 <= result["padding"]["padding_fraction"] < 0.5
    assert result["sdpa_cudnn_enabled"] is False  # the params' train.cudnn_attention
    assert result["speedup_vs_marian"] == {}
    assert "transformer (round 2)" in table and "lstm_additive" in table


def row(table: str, label: str) -> str:
    """What the printed table says about the run labelled `label`."""
    (line,) = (line for line in table.splitlines() if line[:32].rstrip() == label)
    return line[32:].strip()


def ratios(ours: list[dict[str, Any]], marian: list[dict[str, Any]]) -> list[float]:
    return [
        round(o["tokens_per_sec"] / m["tokens_per_sec"], 3)
        for o, m in zip(ours, marian, strict=True)
    ]


def test_each_round_pairs_every_variant_of_ours_with_its_own_marian_run(
    tiny_pipeline, tmp_path, fake_transformers
):
    """bf16 on CPU, ours with and without weight copies and with CUDA graphs (which need CUDA),
    Marian, twice; logged to MLflow."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result, table = throughput(
        tiny_pipeline, tmp_path, ["transformer"], "--marian", "transformer",
        "--low-precision-weights", "both", "--cuda-graphs", "both", "--mlflow",
        precision="bf16-mixed", cwd=tmp_path, marian=fake_transformers, MLFLOW_TRACKING_URI=uri,
    )  # fmt: skip
    runs = result["runs"]
    planned = ["graphed,casts", "eager,copies", "eager,casts"]
    jobs = [*(f"transformer,ours,{mode}" for mode in planned), "transformer,marian,eager,casts"]
    assert [(r["round"], r["job"]) for r in runs] == [(i, job) for i in (0, 1) for job in jobs]
    graphed, copies, casts, marian = (runs[i::4] for i in range(4))
    if not torch.cuda.is_available():
        assert all("CUDA graphs need a CUDA device" in r["error"] for r in graphed)
        assert row(table, "transformer +graphs (round 2)").startswith("RuntimeError")
    assert all(r["low_precision_weights"] and r["autocast_bf16"] for r in copies)
    assert not any(r["low_precision_weights"] for r in casts)
    assert all(r["loss_finite"] for r in copies + casts + marian)
    assert "transformer -copies (round 2)" in table and "marian(transformer) (round 2)" in table

    per_round = result["speedup_vs_marian_per_round"]
    assert per_round == {
        "ours_eager_vs_marian_eager": ratios(copies, marian),
        "ours_eager_without_weight_copies_vs_marian_eager": ratios(casts, marian),
    }
    assert result["speedup_vs_marian"] == {
        key: round(statistics.median(values), 3) for key, values in per_round.items()
    }

    # Marian's sided parameters: its layer stacks, and the output layer with the decoder's.
    vocab = json.loads((tiny_pipeline.repo / "data" / "tokenized" / "tokenizer.json").read_text())
    d_model = tiny_pipeline.params["models"]["transformer"]["model"]["d_model"]
    layer = d_model * d_model + d_model
    for run in marian:
        assert run["name"] == "marian(transformer)" and run["attn_implementation"] == "sdpa"
        assert run["encoder_parameters"] == layer  # one encoder layer
        assert run["decoder_parameters"] == layer + vocab["src_vocab_size"] * d_model
    check_mlflow_run(uri, result, tmp_path / "throughput.json")


def check_mlflow_run(uri: str, result: dict[str, Any], out: Path) -> None:
    """One finished run: tags, settings as params, figures by round, speed-ups, the JSON."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("benchmarks")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["benchmark"] == "throughput" and run.data.tags["git.commit"]
    assert run.data.params["batch_tokens"] == str(result["batch_tokens"])
    assert run.data.params["env.torch"].startswith("2.")
    assert run.data.params["low_precision_weights"] == "both"
    copies = [r for r in result["runs"] if r["job"] == "transformer,ours,eager,copies"]
    history = client.get_metric_history(run.info.run_id, "transformer/tokens_per_sec")
    assert sorted((m.step, m.value) for m in history) == [
        (r["round"], r["tokens_per_sec"]) for r in copies
    ]
    for name in ("transformer_without_weight_copies", "marian_transformer"):
        assert len(client.get_metric_history(run.info.run_id, f"{name}/tokens_per_sec")) == 2
    speedup = run.data.metrics["speedup/ours_eager_vs_marian_eager"]
    assert speedup == result["speedup_vs_marian"]["ours_eager_vs_marian_eager"]
    (artifact,) = client.list_artifacts(run.info.run_id)
    assert artifact.path == out.name


def test_isolate_measures_each_job_in_its_own_process(tiny_pipeline, tmp_path):
    """Each job goes to a child process as its `--job` spec and comes back as it was asked."""
    result, _ = throughput(
        tiny_pipeline, tmp_path, ["transformer"], "--marian", "", "--isolate", "--rounds", "1",
        "--low-precision-weights", "both", precision="bf16-mixed",
    )  # fmt: skip
    assert result["isolated"] is True
    runs = result["runs"]
    assert [(r["job"], r["low_precision_weights"], r["isolated"]) for r in runs] == [
        ("transformer,ours,eager,copies", True, True),
        ("transformer,ours,eager,casts", False, True),
    ]
    assert all(r["tokens_per_sec"] > 0 and r["loss_finite"] for r in runs)


def test_a_spent_time_budget_skips_the_remaining_jobs(tiny_pipeline, tmp_path):
    result, table = throughput(
        tiny_pipeline, tmp_path, ["transformer"], "--marian", "", "--max-seconds", "0"
    )
    assert [(r["round"], r["skipped"]) for r in result["runs"]] == [
        (0, "time budget"),
        (1, "time budget"),
    ]
    assert result["speedup_vs_marian"] == {}
    assert row(table, "transformer (round 2)") == "time budget"


@pytest.mark.parametrize(
    "mode", ["eager,copies", "compiled,casts", "graphed,casts", "compiled+graphed,casts"]
)
def test_a_job_spec_round_trips(tiny_pipeline, tmp_path, mode):
    """`--job` parsed and written back (the spent budget skips the job: nothing is measured)."""
    spec = f"transformer,ours,{mode}"
    result, _ = throughput(
        tiny_pipeline, tmp_path, ["transformer"], "--job", spec, "--max-seconds", "0"
    )
    assert [r["job"] for r in result["runs"]] == [spec]


def test_compiled_jobs_are_measured_in_every_round_beside_the_others(tiny_pipeline, tmp_path):
    result, _ = throughput(
        tiny_pipeline, tmp_path, ["transformer"], "--marian", "transformer", "--compile",
        "transformer", "--compile-marian", "--cuda-graphs", "on", "--rounds", "3",
        "--max-seconds", "0",
    )  # fmt: skip
    per_round = [
        "transformer,ours,graphed,casts",
        "transformer,ours,compiled+graphed,casts",
        "transformer,marian,eager,casts",
    ]
    assert [(r["round"], r["job"]) for r in result["runs"]] == [
        (round_, spec) for round_ in range(3) for spec in per_round
    ] + [(0, "transformer,marian,compiled,casts")]


def test_a_malformed_job_spec_is_refused(tmp_path):
    done = bench("throughput", "--job", "x,ours,fast,casts", "--out", str(tmp_path / "o.json"),
                 check=False)  # fmt: skip
    assert done.returncode == 2
    assert "ARCH,ours|marian,eager|compiled|graphed|compiled+graphed,copies|casts" in done.stderr
    assert not (tmp_path / "o.json").exists()


def test_decode_reports_batched_and_unbatched_speed(tiny_pipeline, tmp_path):
    repo = tiny_pipeline.repo
    out = tmp_path / "decode.json"
    bench(
        "decode", "--model", str(repo / "artifacts" / TRANSFORMER),
        "--prepared", str(repo / "data" / "prepared"), "--beam", "2", "--batch-size", "8",
        "--unbatched-sentences", "3", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    batched, single = result["runs"]
    assert batched["batch_size"] == 8 and batched["sentences"] > 3
    assert single["batch_size"] == 1 and single["sentences"] == 3
    assert batched["sentences_per_sec"] > 0 and single["sentences_per_sec"] > 0
    assert result["beam_size"] == 2


def test_report_gathers_time_to_bleu_of_finished_runs(tiny_pipeline, tmp_path):
    out = tmp_path / "report.json"
    bench("report", str(tiny_pipeline.repo.parent), "--out", str(out))
    runs = json.loads(out.read_text())["runs"]
    job = tiny_pipeline.repo.name
    architectures = tiny_pipeline.params["architectures"]
    assert sorted(runs) == sorted(f"{job}/{trained(arch)}" for arch in architectures)
    for arch in architectures:
        entry = runs[f"{job}/{trained(arch)}"]
        assert entry["training"]["arch"] == arch
        assert entry["time_to_bleu"]["epochs"] == 1
        assert set(entry["test"]) == set(tiny_pipeline.params["data"]["test_splits"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_and_compiled_runs_have_their_own_speedups(
    tiny_pipeline, tmp_path, fake_transformers
):
    result, table = throughput(
        tiny_pipeline, tmp_path, ["transformer"], "--marian", "transformer", "--rounds", "1",
        "--cuda-graphs", "both", "--low-precision-weights", "on", "--compile", "transformer",
        "--device", "cuda", "--profile-steps", "1",
        precision="bf16-mixed", marian=fake_transformers,
    )  # fmt: skip
    assert set(result["speedup_vs_marian"]) == {
        "ours_cuda_graphs_vs_marian_eager",
        "ours_eager_vs_marian_eager",
        "ours_compiled_cuda_graphs_vs_marian_eager",
    }
    assert row(table, "transformer +graphs") and row(table, "transformer +compile +graphs")
    assert all("profile" in run for run in result["runs"])  # one round: each model profiled


ATEN = "void at::native::(anonymous namespace)::"  # how PyTorch's own kernels are named


@pytest.mark.parametrize(
    ("kernel", "category"),
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
        ("nvjet_tst_128x192_64x4_1x2_h_bz_coopA_NNT", "matmul"),
        ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<>", "attention"),
        ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
        (ATEN + "cunn_SoftMaxForward<4, float, float>", "softmax / cross-entropy"),
        (ATEN + "nll_loss_forward_reduce_cuda_kernel_2d<float>", "softmax / cross-entropy"),
        (ATEN + "vectorized_layer_norm_kernel<float, float>", "layer norm"),
        (ATEN + "multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
        (ATEN + "fused_dropout_kernel_vec<float, float>", "dropout / random"),
        ("void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add>", "elementwise"),
        ("void at::native::reduce_kernel<512, 1, ReduceOp<float, func_wrapper_t>>", "reduction"),
        ("void at::native::embedding_backward_feature_kernel<float, float, long>", "other"),
    ],
)
def test_profiled_kernels_fall_in_the_category_their_name_says(kernel, category):
    from pipelines.training.profiling import kernel_category

    assert kernel_category(kernel) == category


def test_study_parts_lays_out_a_comparison_s_runs_and_merges_the_report(tmp_path):
    """`benchmarks.study_parts`: a runs.json's histories become logs/<run>/history.csv for the
    part that reads them, and `merge` writes one report from the pickled parts."""
    runs = {
        "runs": {
            f"{arch}-1234": {
                "test": {"test_2016_flickr": {"bleu": 1.0}},
                "history": "epoch,step,train_seconds,val_bleu\n0,10,5.0,1.5\n1,20,10.0,2.5\n",
            }
            for arch in ("transformer", "lstm_additive")
        }
    }
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["study"].update(parts=["efficiency"], bleu_levels=[1.0, 2.0])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "benchmarks.study_parts"]
    common = ["--params", str(tmp_path / "params.yaml"), "--out", str(out)]
    subprocess.run(
        [*command, "run", "--parts", "efficiency", *common, "--runs", str(tmp_path / "runs.json")],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    report = out / "study.md"
    subprocess.run(
        [*command, "merge", "--out", str(out), "--report", str(report)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    text = report.read_text(encoding="utf-8")
    assert "parts: efficiency." in text and "## 5. Training efficiency" in text
    assert "| transformer-1234 | transformer | 5 s, step 10 | 10 s, step 20 |" in text
    assert "part `cost` off" in text


def test_attention_times_each_plan_shape_and_the_implementations_agree(tiny_pipeline, tmp_path):
    out = tmp_path / "attention.json"
    done = bench(
        "attention", "--params", str(tiny_pipeline.repo / "params.yaml"),
        "--tokenized", str(tiny_pipeline.repo / "data" / "tokenized"), "--arch", "transformer",
        "--batch-tokens", "256", "--batches", "4", "--iterations", "1", "--repeats", "1",
        "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    shapes = {tuple(row["shape"]) for row in result["runs"]}
    assert 1 <= len(shapes) <= 4
    assert sum({tuple(r["shape"]): r["batches"] for r in result["runs"]}.values()) == 4
    expected = {
        (shape, attention, name)
        for shape in shapes
        for attention in ("padded", "causal")
        for name in ("kernel", "written_out", "written_out_compiled")
    }
    assert {(tuple(r["shape"]), r["attention"], r["implementation"]) for r in result["runs"]} == (
        expected
    )
    model = tiny_pipeline.params["models"]["transformer"]["model"]
    assert result["heads"] * result["head_dim"] == model["d_model"]
    for row in result["runs"]:
        _, source, target = row["shape"]
        assert row["queries"] == target
        assert row["keys"] == (source if row["attention"] == "padded" else target)
        assert row["max_abs_difference"] < 1e-5  # float32 on CPU: the same attention
        assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0
    assert "written_out_compiled" in done.stdout and "causal" in done.stdout
