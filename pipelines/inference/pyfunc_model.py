"""The exported translator as an MLflow pyfunc model: source sentences in, translations out.

The exported folder (``model.safetensors``, ``config.json``, ``tokenizer/``) plus ``decoding.json``,
the decoding settings it was evaluated with, travels as the model's artifact ``model_dir``; the
code that reads it (``models/`` and the ``pipelines`` packages a
:class:`~pipelines.inference.translator.Translator` needs: core, data, inference) travels as
``code_paths``. Each loaded model imports that code afresh from its own copy, so a champion and a
challenger logged from different commits can be loaded side by side in one process without sharing
a cached module (mlflow#12471). ``predict(params=...)`` overrides the recorded settings; the
signature's param defaults are those settings.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from pipelines.core.params import DecodingSettings
from pipelines.inference.settings import DECODING_FILE, read_settings, write_settings

MODEL_DIR_KEY = "model_dir"
INPUT_COLUMN = "source"
CODE_PACKAGES = ("models", "pipelines")
# What of `pipelines` a Translator needs at inference time (imports only go down the layers);
# training, tracking, reports, ops and stages stay out of the model.
SHIPPED_PIPELINES = ("__init__.py", "core", "data", "inference")
NOT_CODE = shutil.ignore_patterns("__pycache__", "*.pyc")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def sentences_from(model_input: Any) -> list[str]:
    """The source sentences of a DataFrame (column ``source``), Series, array, list or string."""
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN in model_input.columns:
            values = model_input[INPUT_COLUMN]
        elif len(model_input.columns) == 1:
            values = model_input.iloc[:, 0]
        else:
            raise ValueError(
                f"expected a column {INPUT_COLUMN!r}, got columns {list(model_input.columns)}"
            )
        sentences = values.tolist()
    elif isinstance(model_input, str):
        sentences = [model_input]
    elif hasattr(model_input, "tolist"):  # Series, numpy array
        sentences = model_input.tolist()
    else:
        sentences = list(model_input)
    for number, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise ValueError(
                f"input row {number}: expected a string, got {type(sentence).__name__}"
            )
    return sentences


@contextmanager
def own_code(code_dir: Path) -> Iterator[None]:
    """Import ``models``/``pipelines`` from `code_dir` rather than from modules already imported.

    MLflow only prepends a model's code folder to ``sys.path``; a package of the same name that is
    already in ``sys.modules`` (the caller's, or another model's) would silently be reused. The
    previously imported modules are put back afterwards; the objects built inside keep the code
    they were built with.
    """
    if not all((code_dir / package).is_dir() for package in CODE_PACKAGES):
        yield
        return

    def ours(name: str) -> bool:
        return name.split(".", 1)[0] in CODE_PACKAGES

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(code_dir))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(code_dir))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


class TranslatorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of :class:`~pipelines.inference.translator.Translator` (safetensors)."""

    def load_context(self, context) -> None:
        model_dir = Path(context.artifacts[MODEL_DIR_KEY])
        device = (context.model_config or {}).get("device", "cpu")
        # A logged model is laid out as <model>/artifacts/<folder> beside <model>/code/.
        with own_code(model_dir.parents[1] / "code"):
            translator = importlib.import_module("pipelines.inference.translator")
            self.translator = translator.Translator.load(model_dir, device=device)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        """Translations of `model_input`; `params` override the model's recorded settings."""
        # MLflow hands over numpy scalars; the settings check wants plain Python values.
        given = {k: v.item() if hasattr(v, "item") else v for k, v in (params or {}).items()}
        sentences = sentences_from(model_input)
        if not hasattr(self.translator, "settings"):
            # Code logged before models recorded their settings: translate took loose keywords.
            return self.translator.translate(sentences, **{**DecodingSettings().to_dict(), **given})
        # The translator's own settings class: the one of this model's logged code.
        settings = self.translator.settings.with_overrides(**given)
        return self.translator.translate(sentences, settings)


def stage_code(folder: Path) -> list[str]:
    """Copy ``models/`` and the shipped ``pipelines`` packages into `folder`; return code_paths."""
    models = folder / "models"
    shutil.copytree(PROJECT_ROOT / "models", models, ignore=NOT_CODE)
    pipelines = folder / "pipelines"
    pipelines.mkdir(parents=True)
    for name in SHIPPED_PIPELINES:
        source = PROJECT_ROOT / "pipelines" / name
        if source.is_dir():
            shutil.copytree(source, pipelines / name, ignore=NOT_CODE)
        else:
            shutil.copy2(source, pipelines / name)
    return [str(models), str(pipelines)]


def stage_model_dir(model_dir: Path, folder: Path, settings: DecodingSettings) -> Path:
    """A copy of the exported `model_dir` in `folder`, with `settings` as its decoding.json."""
    staged = folder / model_dir.name
    shutil.copytree(model_dir, staged)
    write_settings(staged / DECODING_FILE, settings)
    return staged


def pip_requirements() -> list[str]:
    """Pinned to what is running, so MLflow need not infer them in a subprocess."""
    from importlib.metadata import version

    torch_version = version("torch").split("+", 1)[0]
    packages = ("sentencepiece", "safetensors", "pandas", "numpy")
    return [f"torch=={torch_version}", *(f"{name}=={version(name)}" for name in packages)]


def shipped_settings(model_dir: Path, decoding: DecodingSettings | None = None) -> DecodingSettings:
    """What a model logged from `model_dir` records as its decoding settings: `decoding` (only
    its decoding keys, when it is an EvaluateParams), else the folder's own decoding.json, else
    the defaults."""
    if decoding is not None:
        return decoding.decoding()
    return read_settings(model_dir) or DecodingSettings()


def log_pyfunc_model(
    model_dir: Path,
    name: str,
    input_example: list[str],
    metadata: dict[str, Any] | None = None,
    decoding: DecodingSettings | None = None,
):
    """Log `model_dir` as a pyfunc model into the active run; returns MLflow's ModelInfo.

    `decoding`: the settings the model was evaluated with (params.evaluate), shipped as its
    ``decoding.json``; None keeps the folder's own decoding.json, else :class:`DecodingSettings`.
    """
    import tempfile

    from mlflow.models import infer_signature

    from pipelines.core.digest import code_digest
    from pipelines.inference.translator import Translator

    settings = shipped_settings(model_dir, decoding)
    with tempfile.TemporaryDirectory() as staging:
        staged = stage_model_dir(model_dir, Path(staging) / "model", settings)
        quick = settings.with_overrides(beam_size=1, max_len_margin=10)
        # An unnamed string column: a list, a Series or a one-column DataFrame all pass MLflow's
        # schema check (a named column would turn a plain list away before predict sees it).
        outputs = Translator.load(staged).translate(input_example, quick)
        signature = infer_signature(input_example, outputs, params=settings.to_dict())
        code_paths = stage_code(Path(staging) / "code")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=TranslatorModel(),
            artifacts={MODEL_DIR_KEY: str(staged)},
            code_paths=code_paths,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements(),
            metadata={
                "code_sha256": code_digest(code_paths),
                "decoding": settings.to_dict(),
                **(metadata or {}),
            },
        )
