"""`params.yaml` read into typed dataclasses: the one home of hyperparameters.

Every section is validated when loaded, before any data is read or any model is built; an unknown
key, a wrong type or an impossible value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from models.config import ConfigError, from_dict, require
from models.factory import ModelConfig, model_config_from_dict
from pipelines.core.study_params import StudyParams

DEFAULT_PARAMS = Path("params.yaml")


@dataclass
class DataParams:
    """Where the corpus comes from and which splits play which role."""

    dataset: str = "data/multi30k"
    config: str | None = None
    revision: str | None = None
    src_lang: str = "en"
    tgt_lang: str = "de"
    train_split: str = "train"
    validation_split: str = "validation"
    test_splits: list[str] = field(default_factory=lambda: ["test_2016_flickr", "test_2017_flickr"])
    max_train_pairs: int = 0  # 0 keeps all; the tiny test profile uses a few hundred
    max_eval_pairs: int = 0  # 0 keeps all; smoke tests only, never for reported scores

    def validate(self, prefix: str = "") -> None:
        require(self.src_lang != self.tgt_lang, f"{prefix}tgt_lang", "must differ from src_lang")
        require(len(self.test_splits) > 0, f"{prefix}test_splits", "needs at least one test split")
        require(
            self.validation_split != self.train_split,
            f"{prefix}validation_split",
            "must differ from train_split",
        )
        require(
            len(set(self.test_splits)) == len(self.test_splits),
            f"{prefix}test_splits",
            "lists a split twice",
        )
        roles = [self.train_split, self.validation_split]
        for split in self.test_splits:
            require(
                split not in roles,
                f"{prefix}test_splits",
                f"{split!r} is also the train or validation split; test sets only report",
            )
        require(self.max_train_pairs >= 0, f"{prefix}max_train_pairs", "must be >= 0")
        require(self.max_eval_pairs >= 0, f"{prefix}max_eval_pairs", "must be >= 0")


@dataclass
class PrepareParams:
    """Normalization and the filters applied to the training split."""

    unicode_form: Literal["NFC", "NFKC", "none"] = "NFKC"
    max_tokens: int = 100
    max_length_ratio: float = 3.0
    drop_duplicates: bool = True

    def validate(self, prefix: str = "") -> None:
        require(self.max_tokens > 0, f"{prefix}max_tokens", "must be > 0")
        require(self.max_length_ratio >= 1.0, f"{prefix}max_length_ratio", "must be >= 1")


@dataclass
class TokenizerParams:
    """SentencePiece settings; trained on the training split only."""

    model_type: Literal["bpe", "unigram"] = "bpe"
    vocab_size: int = 8000
    joint: bool = True
    character_coverage: float = 1.0

    def validate(self, prefix: str = "") -> None:
        require(self.vocab_size >= 16, f"{prefix}vocab_size", "must be >= 16")
        require(
            0.0 < self.character_coverage <= 1.0,
            f"{prefix}character_coverage",
            "must be in (0, 1]",
        )


@dataclass
class OptimParams:
    """Per-architecture optimisation: recurrent and Transformer models want different recipes."""

    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.0
    schedule: Literal["inverse_sqrt", "constant", "linear"] = "inverse_sqrt"
    warmup_steps: int = 1000
    label_smoothing: float = 0.1
    early_stopping_patience: int = 3

    def validate(self, prefix: str = "") -> None:
        require(self.lr > 0, f"{prefix}lr", "must be > 0")
        require(len(self.betas) == 2, f"{prefix}betas", "needs exactly two values")
        require(all(0 <= b < 1 for b in self.betas), f"{prefix}betas", "must be in [0, 1)")
        require(self.weight_decay >= 0, f"{prefix}weight_decay", "must be >= 0")
        require(self.warmup_steps >= 0, f"{prefix}warmup_steps", "must be >= 0")
        require(0 <= self.label_smoothing < 1, f"{prefix}label_smoothing", "must be in [0, 1)")
        require(
            self.early_stopping_patience >= 0, f"{prefix}early_stopping_patience", "must be >= 0"
        )


@dataclass
class ArchParams:
    """One architecture of the comparison: its model and its optimisation recipe."""

    model: dict[str, Any]
    optim: OptimParams = field(default_factory=OptimParams)

    def validate(self, prefix: str = "") -> None:
        model_config_from_dict(self.model, prefix=f"{prefix}model")

    @property
    def model_config(self) -> ModelConfig:
        return model_config_from_dict(self.model)


AVERAGE_OF = ("last", "best")  # which epochs' weights checkpoint averaging takes


@dataclass
class TrainParams:
    """Hardware, batching and bookkeeping shared by every architecture."""

    batch_tokens: int = 4096
    length_multiple: int = 1  # training batches padded to multiples of it: few batch shapes
    accumulate_grad_batches: int = 1
    keep_global_batch: bool = False
    gradient_clip_val: float = 1.0
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    compile: bool = False
    cudnn_attention: bool = False
    low_precision_weights: bool = True
    cuda_graphs: bool = False
    fused_loss: bool = False  # the output projection fused with the loss (no logits tensor)
    deterministic: bool = True
    val_max_len_margin: int = 20
    val_batch_tokens: int = 0  # validation batches' token budget; 0: batch_tokens
    log_every_n_steps: int = 20
    checkpoint_average: int = 0
    checkpoint_average_of: str = "last"  # "last" epochs, or the "best" epochs by validation BLEU
    checkpoint_every_n_steps: int = 0
    profile_steps: int = 0  # >0: profile that many steps of the second epoch (step_profile.json)

    def validation_batch_tokens(self) -> int:
        """Tokens per validation batch: `val_batch_tokens`, or `batch_tokens` when it is 0."""
        return self.val_batch_tokens or self.batch_tokens

    def validate(self, prefix: str = "") -> None:
        require(self.batch_tokens > 0, f"{prefix}batch_tokens", "must be > 0")
        require(self.length_multiple >= 1, f"{prefix}length_multiple", "must be >= 1")
        require(self.accumulate_grad_batches > 0, f"{prefix}accumulate_grad_batches", "must be > 0")
        require(self.gradient_clip_val >= 0, f"{prefix}gradient_clip_val", "must be >= 0")
        require(
            self.devices == "auto" or (isinstance(self.devices, int) and self.devices > 0),
            f"{prefix}devices",
            "must be a positive integer or 'auto'",
        )
        require(self.num_nodes > 0, f"{prefix}num_nodes", "must be > 0")
        require(self.num_workers >= 0, f"{prefix}num_workers", "must be >= 0")
        require(self.val_batch_tokens >= 0, f"{prefix}val_batch_tokens", "must be >= 0")
        require(self.checkpoint_average >= 0, f"{prefix}checkpoint_average", "must be >= 0")
        require(
            self.checkpoint_average_of in AVERAGE_OF,
            f"{prefix}checkpoint_average_of",
            f"must be one of {', '.join(AVERAGE_OF)}, not {self.checkpoint_average_of!r}",
        )
        require(self.profile_steps >= 0, f"{prefix}profile_steps", "must be >= 0")
        require(
            self.checkpoint_every_n_steps >= 0, f"{prefix}checkpoint_every_n_steps", "must be >= 0"
        )


BUDGET_UNITS = ("epochs", "steps", "tokens", "seconds")


@dataclass
class BudgetParams:
    """The training budget every architecture of the comparison gets alike.

    ``epochs``, ``steps`` (optimizer steps) and ``tokens`` (target tokens seen, without padding)
    end a run at the same point on every rerun; ``seconds`` (wall-clock, validation included)
    depends on the machine and its load. Early stopping on validation may end a run sooner.
    """

    unit: Literal["epochs", "steps", "tokens", "seconds"] = "epochs"
    value: float = 10

    def validate(self, prefix: str = "") -> None:
        require(self.value > 0, f"{prefix}value", f"must be > 0 {self.unit}")
        require(
            self.unit == "seconds" or float(self.value).is_integer(),
            f"{prefix}value",
            f"must be a whole number of {self.unit}",
        )

    def describe(self) -> str:
        """For example ``4 epochs`` or ``1,000,000 tokens``."""
        return (
            f"{self.value:,g} {self.unit}"
            if self.unit == "seconds"
            else f"{int(self.value):,} {self.unit}"
        )


@dataclass
class DecodingSettings:
    """How a model decodes: beam search and batching. The one home of their default values.

    The evaluate stage decodes the test sets with them (``evaluate`` in params.yaml), the exported
    model records them (``decoding.json``) and `nmt translate` and the pyfunc model default to them.
    """

    beam_size: int = 5
    length_penalty: float = 0.6
    max_len_margin: int = 50
    batch_size: int = 64

    def validate(self, prefix: str = "") -> None:
        require(self.beam_size >= 1, f"{prefix}beam_size", "must be >= 1")
        require(self.length_penalty >= 0, f"{prefix}length_penalty", "must be >= 0")
        require(self.max_len_margin >= 1, f"{prefix}max_len_margin", "must be >= 1")
        require(self.batch_size >= 1, f"{prefix}batch_size", "must be >= 1")

    def decoding(self) -> DecodingSettings:
        """Only the decoding settings (a subclass such as EvaluateParams carries more keys)."""
        return DecodingSettings(**{f.name: getattr(self, f.name) for f in fields(DecodingSettings)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.decoding())

    def with_overrides(self, **overrides: Any) -> DecodingSettings:
        """These settings with the `overrides` that are not None; checked like params.yaml."""
        given = {key: value for key, value in overrides.items() if value is not None}
        return from_dict(DecodingSettings, {**self.to_dict(), **given})


@dataclass
class EvaluateParams(DecodingSettings):
    """Beam search and scoring of the test sets: the decoding settings plus the stage's own keys."""

    attention_examples: int = 3
    device: str = "auto"  # auto: cuda when available, else cpu
    # Length penalties tried beside `length_penalty` on the validation split; the best validation
    # BLEU (ties: `length_penalty`, then the list's order) decodes the test sets and ships.
    length_penalty_grid: list[float] = field(default_factory=list)

    def validate(self, prefix: str = "") -> None:
        super().validate(prefix)
        require(self.attention_examples >= 0, f"{prefix}attention_examples", "must be >= 0")
        grid = self.length_penalty_grid
        require(all(value >= 0 for value in grid), f"{prefix}length_penalty_grid", "must be >= 0")
        twice = sorted({value for value in grid if grid.count(value) > 1})
        require(
            not twice,
            f"{prefix}length_penalty_grid",
            f"lists {', '.join(map(str, twice))} more than once",
        )
        kind, colon, index = self.device.partition(":")
        require(
            self.device == "auto"
            or (kind in ("cpu", "cuda", "mps") and index.isdigit() == bool(colon)),
            f"{prefix}device",
            "must be auto, cpu, cuda, cuda:<index> or mps",
        )

    def length_penalties(self) -> list[float]:
        """The candidates in the order that breaks ties: `length_penalty`, then the grid."""
        return list(dict.fromkeys([self.length_penalty, *self.length_penalty_grid]))


@dataclass
class TrackingParams:
    """MLflow: experiment naming and the registered model."""

    experiment: str | None = None
    registered_model: str = "nmt-translator"


@dataclass
class RetrainParams:
    """The promotion policy of scheduled retraining."""

    margin_bleu: float = 0.5
    max_p_value: float | None = None
    start: Literal["cold", "warm"] = "cold"
    promotion_split: str | None = None  # default: the validation split

    def validate(self, prefix: str = "") -> None:
        require(self.margin_bleu >= 0, f"{prefix}margin_bleu", "must be >= 0")
        require(
            self.max_p_value is None or 0 < self.max_p_value <= 1,
            f"{prefix}max_p_value",
            "must be null or in (0, 1]",
        )


@dataclass(frozen=True)
class ModelRun:
    """One training of the comparison: an architecture with one seed (DVC ``train@<name>``)."""

    arch: str
    seed: int

    @property
    def name(self) -> str:
        """The stage suffix and the folder name of its outputs, e.g. ``transformer-1234``."""
        return f"{self.arch}-{self.seed}"


@dataclass
class Params:
    """All of `params.yaml`."""

    seeds: list[int] = field(default_factory=lambda: [1234])
    architectures: list[str] = field(default_factory=lambda: ["transformer"])
    budget: BudgetParams = field(default_factory=BudgetParams)
    data: DataParams = field(default_factory=DataParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    tokenizer: TokenizerParams = field(default_factory=TokenizerParams)
    models: dict[str, ArchParams] = field(default_factory=dict)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    retrain: RetrainParams = field(default_factory=RetrainParams)
    study: StudyParams = field(default_factory=StudyParams)

    def validate(self, prefix: str = "") -> None:
        require(len(self.architectures) > 0, "architectures", "needs at least one architecture")
        for arch in self.architectures:
            require(
                arch in self.models,
                "architectures",
                f"{arch!r} has no entry under 'models' (known: {', '.join(sorted(self.models))})",
            )
        require(
            len(set(self.architectures)) == len(self.architectures),
            "architectures",
            "lists an architecture twice",
        )
        for name, arch in self.models.items():
            require(
                arch.optim.schedule != "linear" or self.budget.unit in ("epochs", "steps"),
                f"models.{name}.optim.schedule",
                f"'linear' decays to zero at the end of the budget, so it needs a budget in "
                f"epochs or steps, not {self.budget.unit}",
            )
        require(len(self.seeds) > 0, "seeds", "needs at least one seed")
        twice = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        require(not twice, "seeds", f"lists {', '.join(map(str, twice))} more than once")
        require(all(seed >= 0 for seed in self.seeds), "seeds", "must be >= 0")
        split = self.retrain.promotion_split
        data = self.data
        require(
            split is None or split == data.validation_split or split in data.test_splits,
            "retrain.promotion_split",
            f"{split!r} is neither the validation split ({data.validation_split}) nor one of "
            f"data.test_splits ({', '.join(data.test_splits)})",
        )
        require(
            split not in data.test_splits or len(data.test_splits) > 1,
            "retrain.promotion_split",
            f"{split!r} is the only test split; keep one test split for reporting only "
            f"(or promote on {data.validation_split})",
        )

    @property
    def promotion_split(self) -> str:
        """The split `nmt retrain` scores champion and challenger on (default: validation)."""
        return self.retrain.promotion_split or self.data.validation_split

    @property
    def reporting_splits(self) -> list[str]:
        """The test splits no decision reads: they only report."""
        return [split for split in self.data.test_splits if split != self.promotion_split]

    def model_run(self, arch: str, seed: int | None = None) -> ModelRun:
        """The training of `arch` with `seed` (default: the first seed), as a stage's `--arch`
        and `--seed` ask for it; both must be in params."""
        if arch not in self.models:
            raise ConfigError(f"--arch {arch}: not in params models ({', '.join(self.models)})")
        if seed is not None and seed not in self.seeds:
            raise ConfigError(f"--seed {seed}: not in params seeds {self.seeds}")
        return ModelRun(arch, self.seeds[0] if seed is None else seed)

    def runs(self, arch: str | None = None) -> list[ModelRun]:
        """Every training of the comparison (architectures x seeds), or only `arch`'s."""
        archs = self.architectures if arch is None else [arch]
        return [ModelRun(name, seed) for name in archs for seed in self.seeds]

    def arch(self, name: str) -> ArchParams:
        if name not in self.models:
            raise ConfigError(f"models.{name}: no such architecture in params")
        return self.models[name]

    @property
    def experiment_name(self) -> str:
        if self.tracking.experiment:
            return self.tracking.experiment
        dataset = Path(self.data.dataset.rstrip("/")).name or self.data.dataset
        return f"{dataset}-{self.data.src_lang}-{self.data.tgt_lang}"

    def flat(self, arch: str | None = None) -> dict[str, Any]:
        """Every param as ``section.key`` -> value, for experiment trackers; with `arch`, of the
        ``models`` entries only that architecture's own."""
        flat = flatten(asdict(self))
        if arch is None:
            return flat
        own = f"models.{arch}."
        return {k: v for k, v in flat.items() if not k.startswith("models.") or k.startswith(own)}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def deep_update(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge nested `overrides` into a raw params tree in place (dicts merge, values replace)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            deep_update(tree[key], value)
        else:
            tree[key] = value
    return tree


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate `params.yaml`; raises ConfigError naming the first bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: params file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    check_moved_keys(raw)
    return from_dict(Params, raw)


def check_moved_keys(raw: dict[str, Any]) -> None:
    """Keys of older params files raise an error that says where they went."""
    budget = "replaced by `budget` (unit and value), which every architecture shares"
    if "seed" in raw:
        raise ConfigError("seed: replaced by `seeds: [...]` (one training per seed)")
    if "max_time_s" in (raw.get("train") or {}):
        raise ConfigError(f"train.max_time_s: {budget}")
    for arch, entry in (raw.get("models") or {}).items():
        optim = (entry or {}).get("optim") or {} if isinstance(entry, dict) else {}
        for key in ("max_epochs", "max_steps"):
            if key in optim:
                raise ConfigError(f"models.{arch}.optim.{key}: {budget}")
