"""What the benchmarks share: the environment of a result, timing on the device, the training
loader's batches, Hugging Face ``MarianMTModel`` at one of our configurations, the parameters each
token passes through, and the result files (JSON, an MLflow run)."""

from __future__ import annotations

import itertools
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models import BOS_ID, EOS_ID, PAD_ID, Seq2Seq
from models.seq2seq import count_parameters
from pipelines.data.tokenized import load_split
from pipelines.training.datamodule import token_bucket_loader
from pipelines.training.step import BATCH_KEYS

log = logging.getLogger("nmt.bench")

Metric = tuple[str, float, int | None]  # MLflow key, value, step (a round) or None


# ----------------------------------------------------------------------------- environment


def environment() -> dict[str, Any]:
    """Versions and device, for every result file."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        import lightning

        info["lightning"] = lightning.__version__
    except ImportError:
        pass
    return info


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(function: Callable[[], object], iterations: int = 1, repeats: int = 3) -> float:
    """Median over `repeats` of the mean seconds of `iterations` calls of `function` (the device
    synchronised around each repeat), after 3 warm-up calls."""
    for _ in range(3):
        function()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            function()
        synchronize()
        times.append((time.perf_counter() - start) / iterations)
    return statistics.median(times)


def matmul_tflops(size: int = 8192, repeats: int = 10, device: str = "cuda") -> float:
    """Measured bf16 dense matrix-product rate (TFLOP/s, median of `repeats`) on random data."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats=repeats) / 1e12


# ----------------------------------------------------------------------------- batches


@dataclass
class Batches:
    """Collated, pinned token-bucket batches and their real-token counts (host-side)."""

    tensors: list[dict[str, Tensor]]
    src_tokens: list[int]
    tgt_tokens: list[int]
    stats: dict[str, float]


def load_batches(
    tokenized: Path,
    split: str,
    batch_tokens: int,
    count: int,
    seed: int = 0,
    length_multiple: int = 1,
) -> Batches:
    """The first `count` batches of the training loader's epoch-0 plan (cycled if fewer)."""
    loader = token_bucket_loader(
        load_split(tokenized, split),
        batch_tokens,
        shuffle=True,
        seed=seed,
        length_multiple=length_multiple,
    )
    tensors, src_tokens, tgt_tokens = [], [], []
    for batch in itertools.islice(itertools.cycle(loader), count):
        pinned = {key: batch[key] for key in BATCH_KEYS}
        if torch.cuda.is_available():
            pinned = {key: value.pin_memory() for key, value in pinned.items()}
        tensors.append(pinned)
        src_tokens.append(int((batch["src"] != PAD_ID).sum()))
        tgt_tokens.append(int((batch["tgt_out"] != PAD_ID).sum()))
    return Batches(tensors, src_tokens, tgt_tokens, loader.batch_sampler.stats())


# ----------------------------------------------------------------------------- models


def marian_for(config: dict[str, Any], vocab_size: int) -> nn.Module:
    """Hugging Face MarianMTModel with the architecture of a TransformerConfig dict, untrained."""
    from transformers import MarianConfig, MarianMTModel

    if config.get("norm", "post") != "post":
        raise ValueError("MarianMTModel is post-LayerNorm; compare it with a norm: post config")
    marian_config = MarianConfig(
        vocab_size=vocab_size,
        decoder_vocab_size=vocab_size,
        d_model=config["d_model"],
        encoder_layers=config["encoder_layers"],
        decoder_layers=config["decoder_layers"],
        encoder_attention_heads=config["n_heads"],
        decoder_attention_heads=config["n_heads"],
        encoder_ffn_dim=config["d_ff"],
        decoder_ffn_dim=config["d_ff"],
        activation_function=config.get("activation", "relu"),
        dropout=config.get("dropout", 0.1),
        attention_dropout=config.get("attention_dropout", 0.0),
        activation_dropout=config.get("dropout", 0.1),  # ours drops inside the FFN too
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        max_position_embeddings=config.get("max_len", 1024),
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=config.get("tie_embeddings", True),
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=EOS_ID,
        use_cache=False,
    )
    try:
        return MarianMTModel._from_config(marian_config, attn_implementation="sdpa")
    except (TypeError, ValueError) as err:  # an older/newer transformers without the keyword
        log.warning("MarianMTModel without attn_implementation=sdpa: %s", err)
        return MarianMTModel(marian_config)


def is_marian(model: nn.Module) -> bool:
    """Whether `model` is a Hugging Face MarianMTModel (False where transformers is missing)."""
    try:
        from transformers import MarianMTModel
    except ImportError:
        return False
    return isinstance(model, MarianMTModel)


def sided_parameters(model: nn.Module) -> tuple[int, int]:
    """(encoder, decoder) parameters that multiply each source / target token's activations:
    :meth:`models.Seq2Seq.sided_parameters` for our models; for MarianMTModel its layer stacks,
    and the output layer on the decoder side (embedding lookups left out, as for ours)."""
    if isinstance(model, Seq2Seq):
        return model.sided_parameters()
    if is_marian(model):
        encoder = count_parameters([model.model.encoder.layers])
        decoder = count_parameters([model.model.decoder.layers, model.lm_head])
        return encoder, decoder
    raise TypeError(
        f"no sided parameter count for a {type(model).__name__}: the benchmark measures "
        "models.Seq2Seq models and transformers.MarianMTModel"
    )


# ----------------------------------------------------------------------------- results


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def log_to_mlflow(
    command: str, result: dict[str, Any], out: Path, dataset: str, metrics: Iterable[Metric]
) -> str:
    """One run in the MLflow experiment 'benchmarks': code, data and software versions and the
    device as tags, the settings as params, `metrics` (rounds as steps), the JSON `out` as an
    artifact. Returns the run id."""
    from pipelines.tracking import runs

    client = runs.connect()
    experiment = runs.experiment_id(client, "benchmarks")
    tags = {**runs.lineage_tags(dataset), "benchmark": command}
    run_id = client.create_run(experiment, run_name=f"bench {command}", tags=tags).info.run_id
    settings = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))}
    environment = result["environment"].items()
    settings.update({f"env.{k}": v for k, v in environment if v is not None and k != "date"})
    runs.log_params(client, run_id, settings)
    for key, value, step in metrics:
        client.log_metric(run_id, key, value, step=step)
    client.log_artifact(run_id, str(out))
    client.set_terminated(run_id)
    return run_id
