"""MLflow as the place to compare: lineage of every run, the registry and the `champion` alias."""

from __future__ import annotations

import itertools
import json
import re
import uuid

import pandas as pd
import pytest

from pipelines.core.digest import code_digest
from pipelines.core.errors import PipelineError
from pipelines.core.params import DecodingSettings
from pipelines.inference import pyfunc_model
from pipelines.inference.settings import read_settings
from pipelines.tracking import registry
from tests.exported_model import SENTENCES, make_exported_folder
from tests.pipeline_helpers import SEED, SHARED, git, trained

HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
ATTENTION_ARCHS = {"transformer", "lstm_additive", "lstm_multiplicative", "gru"}


# --- pure logic --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "promote"),
    [
        (10.0, None, 0.0, True),  # no champion yet
        (10.1, 10.0, 0.0, True),
        (10.0, 10.0, 0.0, False),  # a tie keeps the champion
        (9.0, 10.0, 0.0, False),
        (10.4, 10.0, 0.5, False),  # within the noise margin
        (10.6, 10.0, 0.5, True),
        (10.5, 10.0, 0.5, True),  # reaching champion + margin is enough
        (10.6, 10.1, 0.5, True),  # float dust: 10.6 - 10.1 < 0.5 in binary
        (10.49, 10.0, 0.5, False),
        (None, 10.0, 0.0, False),
    ],
)
def test_promotion_policy(candidate, champion, margin, promote):
    decided, reason = registry.decide_promotion(candidate, champion, margin)
    assert decided is promote and reason


@pytest.mark.parametrize(
    ("candidate", "p_value", "max_p_value", "promote", "says"),
    [
        (11.0, 0.20, None, True, ">= champion"),  # no significance required: margin alone
        (11.0, 0.01, 0.05, True, "p = 0.0100 <= 0.05"),
        (11.0, 0.20, 0.05, False, "not significant: p = 0.2000 > 0.05"),
        (11.0, None, 0.05, False, "no significance test was run"),
        (10.2, 0.001, 0.05, False, "does not beat"),  # significant, but under the margin
    ],
)
def test_promotion_can_also_require_a_significant_gain(
    candidate, p_value, max_p_value, promote, says
):
    decided, reason = registry.decide_promotion(candidate, 10.0, 0.5, p_value, max_p_value)
    assert decided is promote and says in reason


def test_pyfunc_input_accepts_dataframe_series_list_and_string():
    sentences = ["A cat.", "Two dogs."]
    assert pyfunc_model.sentences_from(pd.DataFrame({"source": sentences})) == sentences
    assert pyfunc_model.sentences_from(pd.DataFrame({"text": sentences})) == sentences
    assert pyfunc_model.sentences_from(pd.Series(sentences)) == sentences
    assert pyfunc_model.sentences_from(sentences) == sentences
    assert pyfunc_model.sentences_from("A cat.") == ["A cat."]
    with pytest.raises(ValueError, match="column 'source'"):
        pyfunc_model.sentences_from(pd.DataFrame({"a": sentences, "b": sentences}))
    with pytest.raises(ValueError, match="row 1: expected a string"):
        pyfunc_model.sentences_from(["A cat.", 3])


NOT_SHIPPED = ("training", "tracking", "reports", "ops", "stages", "cli.py")


def test_staged_code_is_only_what_a_translator_needs(tmp_path):
    import importlib
    import sys

    code = tmp_path / "code"
    code_paths = pyfunc_model.stage_code(code)
    pipelines = sorted(p.name for p in (code / "pipelines").iterdir())
    assert pipelines == ["__init__.py", "core", "data", "inference"]
    for name in NOT_SHIPPED:
        assert not list(code.rglob(name)), name
    assert (code / "models" / "factory.py").exists()
    assert (code / "pipelines" / "inference" / "translator.py").exists()
    assert not list(code.rglob("__pycache__")) and not list(code.rglob("*.pyc"))
    assert HEX64.match(code_digest(code_paths))
    # A translator loads and decodes with the staged code alone: every module of `models` and
    # `pipelines` it imports comes from the staged copy.
    folder = make_exported_folder(tmp_path / "transformer")
    with pyfunc_model.own_code(code):
        translator = importlib.import_module("pipelines.inference.translator")
        outputs = translator.Translator.load(folder).translate(SENTENCES)
        imported = {
            name: getattr(module, "__file__", None) or ""
            for name, module in sys.modules.items()
            if name.split(".", 1)[0] in pyfunc_model.CODE_PACKAGES
        }
    assert len(outputs) == len(SENTENCES)
    assert "pipelines.inference.translator" in imported
    outside = {name: path for name, path in imported.items() if not path.startswith(str(code))}
    assert not outside, outside
    assert not [name for name in imported if name.split(".")[1:2] in (["training"], ["tracking"])]


# --- on the tiny pipeline's store --------------------------------------------------------------

pytestmark_pipeline = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SHARED / "dvc-remote").exists(),
        reason="../shared/dvc-remote is not beside the checkout",
    ),
]


def on_pipeline(test):
    for mark in pytestmark_pipeline:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def store(tiny_pipeline):
    """A client on the tiny pipeline's store, also set as MLflow's tracking URI for this module."""
    import mlflow
    from mlflow.tracking import MlflowClient

    db = tiny_pipeline.repo / "mlruns" / "mlflow.db"
    assert db.exists(), "the pipeline must write the SQLite store under mlruns/"
    uri = f"sqlite:///{db}"
    previous = mlflow.get_tracking_uri()
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(previous)
    mp.undo()


@pytest.fixture(scope="module")
def arch_runs(tiny_pipeline, store):
    experiment = store.get_experiment_by_name("multi30k-en-de")
    runs = store.search_runs([experiment.experiment_id])
    # One seed in the tiny profile: one training run per architecture.
    return {run.data.tags["architecture"]: run for run in runs if "architecture" in run.data.tags}


def source_sentences(repo, count: int) -> list[str]:
    with open(repo / "data" / "prepared" / "test_2016_flickr.jsonl", encoding="utf-8") as handle:
        return [json.loads(line)["src"] for line in itertools.islice(handle, count)]


@on_pipeline
def test_every_architecture_run_carries_its_lineage(tiny_pipeline, store, arch_runs):
    import yaml

    from pipelines.core.params import flatten, load_params

    repo = tiny_pipeline.repo
    params = load_params(repo / "params.yaml")
    # Every key of the project's params.yaml, flattened (the code may add defaults later).
    flat = flatten(yaml.safe_load((repo / "params.yaml").read_text()))
    head = git(repo, "rev-parse", "HEAD").strip()
    data_md5 = (repo / "data" / "multi30k.dvc").read_text().split("md5: ")[1].split()[0]
    for arch in params.architectures:
        run = arch_runs[arch]
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["architecture"] == arch
        assert tags["git.commit"] == head and HEX40.match(tags["git.commit"])
        assert tags["git.dirty"] in ("true", "false")
        assert tags["dvc.data_hash"] == data_md5
        assert HEX64.match(tags["dvc.lock_sha256"])
        for key in ("version.python", "version.torch", "version.lightning", "version.mlflow"):
            assert tags[key], key
        # The device and the thread count: what tells apart two runs of one commit.
        assert tags["device"] and tags["device.cpu"] and int(tags["torch.num_threads"]) >= 1
        # MLflow's own source tags, for the UI's Source and User columns.
        assert tags["mlflow.source.git.commit"] == head
        assert tags["mlflow.source.name"].endswith(
            f"pipelines.stages.train --arch {arch} --seed {SEED}"
        )
        assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
        assert tags["sacrebleu.signature"].startswith("nrefs:1|case:mixed")
        assert tags["mlflow.parentRunId"]
        # Every param, flattened, is on the run (lists as JSON); of `models`, only its own.
        logged = run.data.params
        own = {k for k in flat if not k.startswith("models.") or k.startswith(f"models.{arch}.")}
        assert own <= set(logged), sorted(own - set(logged))[:5]
        others = [k for k in logged if k.startswith("models.") and f"models.{arch}." not in k]
        assert others == [], others[:5]
        assert logged["seed"] == str(SEED) and logged["arch"] == arch
        assert logged["budget.unit"] == params.budget.unit
        # What model selection reads (validation only), and the budget the run used.
        assert f"validation/{params.data.validation_split}/bleu" in run.data.metrics
        assert run.data.metrics["budget/used_epochs"] == params.budget.value
        assert run.data.metrics["budget/used_steps"] > 0
        assert json.loads(logged["data.test_splits"]) == params.data.test_splits
        # The splits it saw, as dataset inputs with their roles.
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) >= {"train", "validation", *params.data.test_splits}
        roles = {
            name: {t.value for t in d.tags if t.key == "mlflow.data.context"}
            for name, d in inputs.items()
        }
        assert roles["train"] == {"train"} and roles[params.data.test_splits[0]] == {"test"}
        # Each from its corpus file at the data version the run is tagged with.
        sources = {name: json.loads(d.dataset.source) for name, d in inputs.items()}
        assert {d.dataset.source_type for d in inputs.values()} == {"dvc"}
        assert {source["md5"] for source in sources.values()} == {data_md5}
        assert sources["train"]["path"].startswith("data/multi30k/train.jsonl")
        # BLEU per test set and per source-length bucket.
        metrics = run.data.metrics
        assert "val/bleu" in metrics
        # The schedule's rate per parameter group (decayed, not decayed), by LearningRateMonitor.
        assert [k for k in metrics if k.startswith("train/lr")], sorted(metrics)
        for split in params.data.test_splits:
            assert 0.0 <= metrics[f"test/{split}/bleu"] <= 100.0
            assert f"test/{split}/chrf" in metrics
            buckets = [k for k in metrics if k.startswith(f"test/{split}/bleu_len_")]
            assert len(buckets) >= 2, buckets
        # Artifacts: tokenizer, hypotheses, curve, attention heatmaps where there is attention.
        listing = {
            folder: [f.path for f in store.list_artifacts(run.info.run_id, folder)]
            for folder in ("tokenizer", "hypotheses", "curves", "attention")
        }
        assert "tokenizer/spm.model" in listing["tokenizer"]
        assert {f"hypotheses/{s}.txt" for s in params.data.test_splits} <= set(
            listing["hypotheses"]
        )
        assert "curves/history.csv" in listing["curves"]
        pngs = [p for p in listing["attention"] if p.endswith(".png")]
        assert bool(pngs) == (arch in ATTENTION_ARCHS), (arch, pngs)


@on_pipeline
def test_parent_run_holds_the_report_and_the_registry_decision(tiny_pipeline, store, arch_runs):
    parent_ids = {run.data.tags["mlflow.parentRunId"] for run in arch_runs.values()}
    assert len(parent_ids) == 1
    parent = store.get_run(parent_ids.pop())
    assert parent.info.status == "FINISHED"
    files = {f.path for f in store.list_artifacts(parent.info.run_id, "comparison")}
    assert files == {
        f"comparison/{name}"
        for name in (
            "comparison.md",
            "comparison.csv",
            "validation_bleu.csv",
            "validation_curves.png",
            "bleu_per_test_set.png",
        )
    }
    assert (
        parent.data.tags["registry.model"] == tiny_pipeline.params["tracking"]["registered_model"]
    )
    assert parent.data.tags["registry.version"]
    for arch in tiny_pipeline.params["architectures"]:
        assert f"{arch}/test_2016_flickr_bleu" in parent.data.metrics


@pytest.fixture(scope="module")
def champion(tiny_pipeline, store):
    name = tiny_pipeline.params["tracking"]["registered_model"]
    return store.get_model_version_by_alias(name, registry.CHAMPION)


@on_pipeline
def test_champion_is_the_best_architecture_on_validation(tiny_pipeline, store, champion):
    repo, params = tiny_pipeline.repo, tiny_pipeline.params
    validation = params["data"]["validation_split"]
    summaries = {
        arch: json.loads((repo / "artifacts" / trained(arch) / "training.json").read_text())
        for arch in params["architectures"]
    }
    scores = {arch: summary["val_bleu"] for arch, summary in summaries.items()}
    arch = champion.tags["architecture"]
    assert scores[arch] == max(scores.values())  # ties: the champion may be any of the best
    assert champion.run_id == summaries[arch]["run_id"]
    name = params["tracking"]["registered_model"]
    assert registry.champion_score(name, validation, client=store) == pytest.approx(
        scores[arch], abs=0.01
    )
    # Who was champion when: the promotion is recorded on the version.
    tags = champion.tags
    assert tags["champion.promoted_at"] and tags["champion.split"] == validation
    assert "champion.previous_version" in tags and "champion.score_delta" in tags
    assert tags[registry.SHA_TAG] == registry.model_sha256(repo / "artifacts" / trained(arch))


def evaluated_settings(tiny_pipeline, arch: str) -> DecodingSettings:
    """The settings the tiny pipeline's evaluate stage decoded `arch`'s test sets with: its
    params, with the length penalty of the best validation BLEU (ties: the earlier candidate)."""
    from pipelines.core.params import load_params

    settings = load_params(tiny_pipeline.repo / "params.yaml").evaluate
    metrics = json.loads((tiny_pipeline.repo / "metrics" / f"{trained(arch)}.json").read_text())
    record = metrics["decoding_selection"]
    assert record["split"] == "validation"
    assert set(record["bleu"]) == {str(value) for value in settings.length_penalties()}
    best = max(settings.length_penalties(), key=lambda value: record["bleu"][str(value)])
    assert record["length_penalty"] == best
    return settings.with_overrides(length_penalty=best)


def recorded_settings(version) -> DecodingSettings:
    """The decoding settings a registered version ships (its tag, the same as decoding.json)."""
    return DecodingSettings(**json.loads(version.tags[registry.DECODING_TAG]))


@on_pipeline
def test_evaluated_settings_are_recorded_and_shipped(tiny_pipeline, champion):
    for arch in tiny_pipeline.params["architectures"]:
        settings = evaluated_settings(tiny_pipeline, arch)
        assert settings.beam_size == 2, "the tiny profile decodes with its own settings"
        assert (
            read_settings(tiny_pipeline.repo / "metrics" / f"{trained(arch)}.decoding.json")
            == settings
        )
        assert not (tiny_pipeline.repo / "artifacts" / trained(arch) / "decoding.json").exists()
    # compare registered the champion with the settings its test sets were decoded with.
    assert recorded_settings(champion) == evaluated_settings(
        tiny_pipeline, champion.tags["architecture"]
    )


@on_pipeline
def test_registering_the_same_model_again_reuses_its_version(tiny_pipeline, store, champion):
    name = tiny_pipeline.params["tracking"]["registered_model"]
    folder = tiny_pipeline.repo / "artifacts" / trained(champion.tags["architecture"])
    before = len(store.search_model_versions(f"name = '{name}'"))
    settings = recorded_settings(champion)
    again = registry.log_and_register(
        champion.run_id, folder, name, decoding=settings, client=store
    )
    assert again == str(champion.version)
    assert len(store.search_model_versions(f"name = '{name}'")) == before
    # The same weights evaluated with other settings are another model: a new version.
    other = settings.with_overrides(beam_size=settings.beam_size + 1)
    new = registry.log_and_register(champion.run_id, folder, name, decoding=other, client=store)
    assert new != again and recorded_settings(store.get_model_version(name, new)) == other
    assert registry.champion_version(name, client=store) == str(champion.version)


@on_pipeline
def test_champion_alias_loads_with_pyfunc_and_translates(tiny_pipeline, store, champion):
    import mlflow

    from pipelines.inference.translator import Translator

    name = tiny_pipeline.params["tracking"]["registered_model"]
    repo = tiny_pipeline.repo
    sentences = source_sentences(repo, 8)
    model = mlflow.pyfunc.load_model(f"models:/{name}@{registry.CHAMPION}")
    translator = Translator.load(repo / "artifacts" / trained(champion.tags["architecture"]))
    settings = recorded_settings(champion)
    expected = translator.translate(sentences, settings)
    assert model.predict(sentences) == expected
    assert model.predict(pd.DataFrame({"source": sentences})) == expected
    assert model.predict(pd.Series(sentences)) == expected
    fast = model.predict(sentences, params={"beam_size": 1})
    assert fast == translator.translate(sentences, settings.with_overrides(beam_size=1))
    signature = model.metadata.signature
    assert [spec.type.name for spec in signature.inputs.inputs] == ["string"]
    # The params a caller may pass, with the settings the model was evaluated with as defaults.
    assert {p.name: p.default for p in signature.params} == settings.to_dict()


@on_pipeline
def test_champion_and_challenger_load_side_by_side(tiny_pipeline, store, champion, arch_runs):
    """Two models in one process each answer with their own weights (mlflow PR #12471)."""
    import mlflow

    from pipelines.inference.translator import Translator

    repo, name = tiny_pipeline.repo, tiny_pipeline.params["tracking"]["registered_model"]
    challenger_arch = next(
        a for a in tiny_pipeline.params["architectures"] if a != champion.tags["architecture"]
    )
    before = store.get_run(arch_runs[challenger_arch].info.run_id).info
    settings = evaluated_settings(tiny_pipeline, challenger_arch)
    challenger = registry.log_and_register(
        arch_runs[challenger_arch].info.run_id,
        repo / "artifacts" / trained(challenger_arch),
        name,
        decoding=settings,
        client=store,
    )
    store.set_registered_model_alias(name, "challenger", challenger)
    # Logging the model into the finished run kept its status and its duration.
    after = store.get_run(arch_runs[challenger_arch].info.run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time)
    sentences = source_sentences(repo, 8)
    expected = {
        challenger_arch: Translator.load(repo / "artifacts" / trained(challenger_arch)).translate(
            sentences, settings
        ),
        champion.tags["architecture"]: Translator.load(
            repo / "artifacts" / trained(champion.tags["architecture"])
        ).translate(sentences, recorded_settings(champion)),
    }
    assert expected[champion.tags["architecture"]] != expected[challenger_arch], (
        "need two different models"
    )
    first = mlflow.pyfunc.load_model(f"models:/{name}@{registry.CHAMPION}")
    second = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    assert second.predict(sentences) == expected[challenger_arch]
    assert first.predict(sentences) == expected[champion.tags["architecture"]]
    # The alias `champion` did not move: registering is not promoting.
    assert registry.champion_version(name, client=store) == str(champion.version)


@on_pipeline
def test_each_model_runs_its_own_logged_code(tiny_pipeline, champion, tmp_path):
    """A model whose logged code differs from the code already imported still runs its own."""
    import mlflow

    folder = tiny_pipeline.repo / "artifacts" / trained(champion.tags["architecture"])
    staging = tmp_path / "code"
    staging.mkdir()
    code_paths = pyfunc_model.stage_code(staging)
    translator_py = staging / "pipelines" / "inference" / "translator.py"
    source = translator_py.read_text()
    best_only = "return [best.text for best, *_ in self.translate_n_best(sentences, 1,"
    assert best_only in source
    translator_py.write_text(source.replace(best_only, 'return ["patched" for _ in sentences]  #'))
    mlflow.pyfunc.save_model(
        tmp_path / "patched",
        python_model=pyfunc_model.TranslatorModel(),
        artifacts={pyfunc_model.MODEL_DIR_KEY: str(folder)},
        code_paths=code_paths,
        pip_requirements=pyfunc_model.pip_requirements(),
    )
    name = tiny_pipeline.params["tracking"]["registered_model"]
    patched = mlflow.pyfunc.load_model(str(tmp_path / "patched"))
    original = mlflow.pyfunc.load_model(f"models:/{name}@{registry.CHAMPION}")
    sentences = source_sentences(tiny_pipeline.repo, 3)
    assert patched.predict(sentences) == ["patched"] * 3
    assert original.predict(sentences) != ["patched"] * 3
    import pipelines.inference.translator  # the caller's own modules are back in place

    assert pipelines.inference.translator.__file__.startswith(str(pyfunc_model.PROJECT_ROOT))


@on_pipeline
def test_promotions_keep_a_history(tiny_pipeline, store, champion, arch_runs):
    """Tags on each version say who was champion when, with the previous one and the delta."""
    name = f"history-test-{uuid.uuid4().hex[:8]}"
    store.create_registered_model(name)
    archs = tiny_pipeline.params["architectures"]
    versions = [
        str(store.create_model_version(name, champion.source, arch_runs[arch].info.run_id).version)
        for arch in archs[:2]
    ]
    primary = tiny_pipeline.params["data"]["test_splits"][0]
    first = registry.set_champion(name, versions[0], primary, reason="first", client=store)
    assert first["changed"] and first["previous_version"] is None
    again = registry.set_champion(name, versions[0], primary, client=store)
    assert again["changed"] is False
    second = registry.set_champion(name, versions[1], primary, reason="second", client=store)
    scores = [arch_runs[arch].data.metrics[f"test/{primary}/bleu"] for arch in archs[:2]]
    assert second["previous_version"] == versions[0]
    assert second["delta"] == pytest.approx(scores[1] - scores[0], abs=1e-3)
    assert registry.champion_version(name, client=store) == versions[1]
    old = store.get_model_version(name, versions[0]).tags
    assert old["champion.succeeded_by"] == versions[1] and old["champion.demoted_at"]
    history = registry.champion_history(name, client=store)
    assert [entry["version"] for entry in history] == versions
    assert history[1]["previous_version"] == versions[0] and history[1]["reason"] == "second"


@on_pipeline
def test_download_model_folder_gives_the_exported_folder(tiny_pipeline, store, champion, tmp_path):
    name = tiny_pipeline.params["tracking"]["registered_model"]
    arch = champion.tags["architecture"]
    expected = registry.model_sha256(tiny_pipeline.repo / "artifacts" / trained(arch))
    for uri in (
        f"models:/{name}@{registry.CHAMPION}",
        f"models:/{name}/{champion.version}",
        f"runs:/{champion.run_id}/{registry.LOGGED_MODEL_NAME}",
    ):
        folder = registry.download_model_folder(
            uri, tmp_path / uri.replace(":", "_").replace("/", "_")
        )
        assert {p.name for p in folder.iterdir()} >= {
            "model.safetensors",
            "config.json",
            "tokenizer",
            "decoding.json",
        }
        assert registry.model_sha256(folder) == expected, uri
        if uri.startswith("models:/"):  # runs:/ is the run's latest model (maybe other settings)
            assert read_settings(folder) == recorded_settings(champion), uri
    with pytest.raises(PipelineError, match="no-such-model"):
        registry.download_model_folder("models:/no-such-model@champion", tmp_path / "none")
