"""One-GPU benchmarks: training throughput, peak memory and MFU per architecture against Hugging
Face ``MarianMTModel`` on the same configuration, batches and precision; beam-search decoding
speed; and the time-to-BLEU table of finished training runs.

    python -m benchmarks.bench throughput --params profiles/gpu.yaml --out bench.json
    python -m benchmarks.bench decode --model artifacts/transformer --out decode.json
    python -m benchmarks.bench report results/ --out summary.json

Throughput counts non-pad source + target tokens per second of full training steps (bf16
autocast forward, label-smoothed loss, backward, gradient clipping, fused AdamW; our models run
them as the train stage does: the Transformer replaying CUDA graphs of its loss per batch shape
with ``train.cuda_graphs`` (``pipelines.training.cuda_graphs``), otherwise eagerly with bf16 weight copies
kept between steps (``pipelines.training.low_precision``)), timed
between ``torch.cuda.synchronize()`` calls after warm-up steps, over the same token-bucket batches
for every model. MFU = 6 × parameters × tokens/s ÷ the bf16 matrix-product rate measured in the same
process (an 8192³ product). Each token only passes through its own side (the encoder for source
tokens, the decoder and output layer for target tokens), so the same figure is also reported with
6 × (encoder parameters × source tokens + decoder parameters × target tokens) ("sided").
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models import BOS_ID, EOS_ID, PAD_ID, build_model
from models.attention import use_cudnn_attention
from pipelines.core.params import load_params
from pipelines.stages.tokenizer import load_split
from pipelines.training.batching import TokenBucketBatchSampler, TranslationDataset, collate
from pipelines.training.cuda_graphs import StepGraphs
from pipelines.training.low_precision import LowPrecisionWeights
from pipelines.training.module import token_mean_loss

log = logging.getLogger("nmt.bench")

BATCH_KEYS = ("src", "tgt_in", "tgt_out")
MLFLOW_HELP = (
    "also log the results as a run of the MLflow experiment 'benchmarks' (the project's store, or "
    "MLFLOW_TRACKING_URI)"
)


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


def matmul_tflops(size: int = 8192, repeats: int = 10, device: str = "cuda") -> float:
    """Measured bf16 dense matrix-product rate (TFLOP/s, median of `repeats`) on random data."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    for _ in range(3):
        a @ b
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e12


# ----------------------------------------------------------------------------- batches


@dataclass
class Batches:
    """Collated, pinned token-bucket batches and their real-token counts (host-side)."""

    tensors: list[dict[str, Tensor]]
    src_tokens: list[int]
    tgt_tokens: list[int]
    stats: dict[str, float]


def load_batches(
    tokenized: Path, split: str, batch_tokens: int, count: int, seed: int = 0
) -> Batches:
    """The first `count` batches of the training loader's epoch-0 plan (cycled if fewer)."""
    corpus = load_split(tokenized, split)
    sampler = TokenBucketBatchSampler(
        corpus.src_lengths, corpus.tgt_lengths, batch_tokens, shuffle=True, seed=seed
    )
    dataset = TranslationDataset(corpus)
    plan = sampler.batches()
    tensors, src_tokens, tgt_tokens = [], [], []
    for i in range(count):
        batch = collate([dataset[index] for index in plan[i % len(plan)]])
        pinned = {key: batch[key] for key in BATCH_KEYS}
        if torch.cuda.is_available():
            pinned = {key: value.pin_memory() for key, value in pinned.items()}
        tensors.append(pinned)
        src_tokens.append(int((batch["src"] != PAD_ID).sum()))
        tgt_tokens.append(int((batch["tgt_out"] != PAD_ID).sum()))
    return Batches(tensors, src_tokens, tgt_tokens, sampler.stats())


# ----------------------------------------------------------------------------- models


def sided_parameters(model: nn.Module) -> tuple[int, int]:
    """(encoder, decoder) parameters that multiply each source / target token's activations.

    Embedding lookups are no matrix products and are left out; a tied output projection counts on
    the decoder side. Works for this project's models and for MarianMTModel.
    """

    def count(modules: list[nn.Module | None]) -> int:
        seen: set[int] = set()
        total = 0
        for module in modules:
            if module is None:
                continue
            for param in module.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    total += param.numel()
        return total

    if hasattr(model, "encoder_layers"):  # TransformerSeq2Seq
        encoder = count([*model.encoder_layers, model.encoder_norm])
        decoder = count([*model.decoder_layers, model.decoder_norm, model.output_projection])
    elif hasattr(model, "bridge"):  # RecurrentSeq2Seq
        encoder = count([model.encoder])
        decoder = count(
            [model.bridge, model.decoder, model.attention, model.combine, model.output_projection]
        )
    else:  # MarianMTModel
        encoder = count([model.model.encoder.layers])
        decoder = count([model.model.decoder.layers, model.lm_head])
    return encoder, decoder


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


def optimizer_for(model: nn.Module, lr: float, betas: list[float], weight_decay: float):
    """AdamW as lit_module configures it: no decay on biases and norms; fused on CUDA."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=torch.cuda.is_available())


def make_step(
    model: nn.Module,
    forward: Callable[[Tensor, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    label_smoothing: float,
    clip: float,
    precision: str,
    low_precision_weights: bool = False,
    cuda_graphs: bool = False,
) -> Callable[[dict[str, Tensor]], Tensor]:
    """One training step as Lightning's bf16-mixed loop runs lit_module.training_step (with
    `low_precision_weights`, bf16 only, as LowPrecisionWeightsCallback adds to it; with
    `cuda_graphs`, as CudaGraphsCallback does)."""
    device = next(model.parameters()).device.type
    autocast = precision.startswith("bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    copies = LowPrecisionWeights(model) if low_precision_weights else None

    def loss_function(src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> tuple[Tensor, Tensor]:
        return token_mean_loss(forward(src, tgt_in), tgt_out, label_smoothing)

    graphs = StepGraphs(loss_function, params) if cuda_graphs else None

    def step(batch: dict[str, Tensor]) -> Tensor:
        src, tgt_in, tgt_out = (batch[k].to(device, non_blocking=True) for k in BATCH_KEYS)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = (graphs or loss_function)(src, tgt_in, tgt_out)
        loss.backward()
        if copies is not None:
            copies.move_gradients()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=graphs is None)
        if copies is not None:
            copies.refresh()
        return loss.detach()

    return step


def count_syncs(step: Callable, batches: list[dict[str, Tensor]]) -> int | None:
    """Host-device synchronisations during `batches` steps (CUDA's sync debug mode), or None."""
    if not torch.cuda.is_available():
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for batch in batches:
                step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def kernel_profile(
    step: Callable[[dict[str, Tensor]], Tensor], batches: list[dict[str, Tensor]], top: int = 12
) -> dict[str, Any]:
    """GPU work of `batches` training steps under torch.profiler: kernels launched and kernel
    time per step, and the kernels that take the most time. Kernel time far under the wall time
    of a step means the host (Python, dispatch, launches) is the bottleneck, not the GPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for batch in batches:
            step(batch)
        synchronize()
    per_kernel: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            per_kernel.setdefault(event.name, []).append(event.time_range.elapsed_us())
    steps = max(len(batches), 1)
    total_us = sum(sum(times) for times in per_kernel.values())
    ranked = sorted(per_kernel.items(), key=lambda item: -sum(item[1]))[:top]
    return {
        "steps": len(batches),
        "kernels_per_step": round(sum(len(t) for t in per_kernel.values()) / steps, 1),
        "gpu_kernel_ms_per_step": round(total_us / 1000 / steps, 3),
        "top_kernels": [
            {
                "name": name[:100],
                "calls_per_step": len(t) / steps,
                "ms_per_step": sum(t) / 1e3 / steps,
            }
            for name, t in ranked
        ],
    }


def measure(
    name: str,
    model: nn.Module,
    forward: Callable[[Tensor, Tensor], Tensor],
    batches: Batches,
    optim: Any,
    train: Any,
    warmup: int,
    steps: int,
    repeats: int,
    peak_tflops: float | None,
    compiled: bool = False,
    profile_steps: int = 0,
    low_precision_weights: bool = False,
    memory_baseline: tuple[int, int] = (0, 0),
    cuda_graphs: bool = False,
) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """Throughput, peak memory, MFU and host syncs of `steps` training steps after `warmup`.

    With `profile_steps` (CUDA), also returns a function that profiles that many more steps and
    adds the kernel figures to the result: call it after every timed measurement of the process,
    as a model measured after torch.profiler has run in its process runs slower. Peak memory
    counts what was allocated, and reserved, beyond `memory_baseline` (allocated and reserved
    bytes before the model was built: other models are kept for their profiles). CUDA graphs
    keep their activations in a memory pool of their own, which counts as reserved only.
    """
    optimizer = optimizer_for(model, optim.lr, optim.betas, optim.weight_decay)
    autocast_bf16 = train.precision.startswith("bf16")
    low_precision_weights = low_precision_weights and autocast_bf16 and not cuda_graphs
    step = make_step(
        model,
        forward,
        optimizer,
        optim.label_smoothing,
        train.gradient_clip_val,
        train.precision,
        low_precision_weights,
        cuda_graphs,
    )
    model.train()
    started = time.perf_counter()
    for batch in batches.tensors[:warmup]:
        step(batch)
    synchronize()
    warmup_seconds = time.perf_counter() - started
    syncs = count_syncs(step, batches.tensors[warmup : warmup + 3])
    timed = batches.tensors[warmup : warmup + steps]
    src_tokens = sum(batches.src_tokens[warmup : warmup + steps])
    tgt_tokens = sum(batches.tgt_tokens[warmup : warmup + steps])
    # One untimed pass over the timed batches: every shape has been seen once, as in training,
    # where an epoch's shapes recur every epoch (cuDNN attention plans, allocator blocks).
    started = time.perf_counter()
    for batch in timed:
        step(batch)
    synchronize()
    first_pass_seconds = time.perf_counter() - started
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        for batch in timed:
            losses = step(batch)
        synchronize()
        seconds.append(time.perf_counter() - start)
    finite = bool(torch.isfinite(losses).item())
    elapsed = statistics.median(seconds)
    tokens_per_sec = (src_tokens + tgt_tokens) / elapsed
    parameters = sum(p.numel() for p in model.parameters())
    encoder_params, decoder_params = sided_parameters(model)
    result = {
        "name": name,
        "compiled": compiled,
        "autocast_bf16": autocast_bf16,
        "low_precision_weights": low_precision_weights,
        "cuda_graphs": cuda_graphs,
        "parameters": parameters,
        "encoder_parameters": encoder_params,
        "decoder_parameters": decoder_params,
        "steps": len(timed),
        "repeats": repeats,
        "seconds_per_repeat": [round(s, 4) for s in seconds],
        "ms_per_step": round(1000 * elapsed / len(timed), 3),
        "src_tokens": src_tokens,
        "tgt_tokens": tgt_tokens,
        "tokens_per_sec": round(tokens_per_sec, 1),
        "sentences_per_batch": round(sum(b["src"].size(0) for b in timed) / max(len(timed), 1), 1),
        "warmup_steps": warmup,
        "warmup_seconds": round(warmup_seconds, 2),
        "first_pass_seconds": round(first_pass_seconds, 3),
        "host_syncs_per_step": None if syncs is None else syncs / 3,
        "loss_finite": finite,
    }
    if torch.cuda.is_available():
        allocated, reserved = memory_baseline
        peak = torch.cuda.max_memory_allocated() - allocated
        result["peak_memory_gib"] = round(peak / 2**30, 3)
        peak_reserved = torch.cuda.max_memory_reserved() - reserved
        result["peak_reserved_gib"] = round(peak_reserved / 2**30, 3)
    if peak_tflops:
        flops = 6 * parameters * tokens_per_sec
        sided = 6 * (encoder_params * src_tokens + decoder_params * tgt_tokens) / elapsed
        result["model_tflops"] = round(flops / 1e12, 2)
        result["mfu"] = round(flops / (peak_tflops * 1e12), 4)
        result["mfu_sided"] = round(sided / (peak_tflops * 1e12), 4)
    log.info(
        "%s: %.0f tokens/s, %.2f ms/step, peak %.2f GiB, MFU %s, syncs/step %s",
        run_label(result),
        tokens_per_sec,
        result["ms_per_step"],
        result.get("peak_memory_gib", 0.0),
        result.get("mfu"),
        result["host_syncs_per_step"],
    )
    if not (profile_steps and torch.cuda.is_available()):
        return result, None

    def add_profile() -> None:
        result["profile"] = kernel_profile(step, timed[:profile_steps])
        result["gpu_busy_fraction"] = round(
            result["profile"]["gpu_kernel_ms_per_step"] / result["ms_per_step"], 3
        )

    return result, add_profile


def run_job(
    args: argparse.Namespace,
    params: Any,
    batches: Batches,
    vocab_size: int,
    peak: float | None,
    arch: str,
    kind: str,
    compiled: bool,
    low_precision_weights: bool = False,
    cuda_graphs: bool = False,
) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """Build one model (ours or Marian for `arch`) and measure it in this process; our eager
    model keeps bf16 weight copies between steps with `low_precision_weights`, or replays CUDA
    graphs of its loss with `cuda_graphs`. Returns the result and `measure`'s deferred kernel
    profile."""
    arch_params = params.arch(arch)
    torch.manual_seed(params.seed)
    memory_baseline = (
        (torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
        if torch.cuda.is_available()
        else (0, 0)
    )
    if kind == "ours":
        model = build_model(arch_params.model, vocab_size).to(args.device)
        forward, name = model, arch
    else:
        model = marian_for(arch_params.model, vocab_size).to(args.device)

        def forward(src: Tensor, tgt_in: Tensor) -> Tensor:
            # No decoder padding mask: target padding is at the end, so the causal mask alone
            # gives real positions the same context (as in TransformerSeq2Seq).
            return model(
                input_ids=src, attention_mask=src != PAD_ID, decoder_input_ids=tgt_in
            ).logits

        name = f"marian({arch})"
    if compiled:
        model.compile(dynamic=True)
    run, add_profile = measure(
        name,
        model,
        forward,
        batches,
        arch_params.optim,
        params.train,
        args.warmup,
        args.steps,
        args.repeats,
        peak,
        compiled,
        args.profile_steps,
        low_precision_weights and kind == "ours" and not compiled,
        memory_baseline,
        cuda_graphs and kind == "ours" and not compiled and model.graph_safe,
    )
    run.update(kind=kind, arch=arch)
    if kind == "marian":
        run["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    return run, add_profile


@dataclass(frozen=True)
class Job:
    """One model to measure: our `arch` or Marian mirroring it, eager, compiled or (ours) with
    CUDA graphs of its loss (`graphed`); our eager model with bf16 weight copies kept between
    steps (`copies`) or autocast's per-call casts."""

    arch: str
    kind: str  # "ours" | "marian"
    compiled: bool = False
    copies: bool = False
    graphed: bool = False

    def spec(self) -> str:
        mode = "compiled" if self.compiled else "graphed" if self.graphed else "eager"
        return f"{self.arch},{self.kind},{mode},{'copies' if self.copies else 'casts'}"

    @classmethod
    def parse(cls, spec: str) -> Job:
        arch, kind, mode, weights = spec.split(",")
        if mode not in ("eager", "compiled", "graphed") or weights not in ("copies", "casts"):
            raise ValueError(
                f"bad --job {spec!r}: ARCH,ours|marian,eager|compiled|graphed,copies|casts"
            )
        return cls(arch, kind, mode == "compiled", weights == "copies", mode == "graphed")


def planned_jobs(
    args: argparse.Namespace, archs: list[str], copies: list[bool], graphs: list[bool]
) -> list[tuple[int, Job]]:
    """(round, job) in measuring order: the models that are not compiled round by round (ours in
    each requested variant, Marian, ours, Marian, ...), so that a drift of the machine shows as a
    spread between rounds; then the compiled ones, once."""
    eager = []
    for arch in archs:
        eager += [Job(arch, "ours", graphed=True)] if True in graphs else []
        eager += [Job(arch, "ours", copies=c) for c in copies] if False in graphs else []
    if args.marian:
        eager.append(Job(args.marian, "marian"))
    jobs = [(round_, job) for round_ in range(args.rounds) for job in eager]
    jobs += [(0, Job(arch, "ours", compiled=True)) for arch in args.compile or []]
    if args.marian and args.compile_marian:
        jobs.append((0, Job(args.marian, "marian", compiled=True)))
    return jobs


def run_isolated(args: argparse.Namespace, cudnn: bool, job: Job) -> dict[str, Any]:
    """Measure one job in a fresh Python process, so no job runs after another in its process."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "job.json"
        command = [
            sys.executable, "-m", "benchmarks.bench", "throughput", "--job", job.spec(),
            "--params", str(args.params), "--tokenized", str(args.tokenized),
            "--batch-tokens", str(args.batch_tokens), "--warmup", str(args.warmup),
            "--steps", str(args.steps), "--repeats", str(args.repeats),
            "--profile-steps", str(args.profile_steps), "--cudnn-sdpa", "on" if cudnn else "off",
            "--device", args.device, "--out", str(out),
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        child = json.loads(out.read_text())
    (run,) = child["runs"]
    run["isolated"] = True
    run["bf16_matmul_tflops"] = child.get("bf16_matmul_tflops")
    return run


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    params = load_params(args.params)
    archs = args.archs or list(params.models)
    meta = json.loads((args.tokenized / "tokenizer.json").read_text())
    vocab_size = meta["src_vocab_size"]
    batch_tokens = args.batch_tokens or params.train.batch_tokens
    batches = load_batches(
        args.tokenized, params.data.train_split, batch_tokens, args.warmup + args.steps + 3
    )
    cudnn = {"on": True, "off": False, None: params.train.cudnn_attention}[args.cudnn_sdpa]
    copies_mode = args.low_precision_weights or (
        "on" if params.train.low_precision_weights else "off"
    )
    copies = {"on": [True], "off": [False], "both": [True, False]}[copies_mode]
    graphs_mode = args.cuda_graphs or ("on" if params.train.cuda_graphs else "off")
    graphs = {"on": [True], "off": [False], "both": [True, False]}[graphs_mode]
    use_cudnn_attention(cudnn)  # the same SDPA backends for every model, Marian's too
    results: dict[str, Any] = {
        "environment": environment(),
        "sdpa_cudnn_enabled": torch.backends.cuda.cudnn_sdp_enabled(),
        "params": str(args.params),
        "batch_tokens": batch_tokens,
        "precision": params.train.precision,
        "low_precision_weights": copies_mode,  # requested; each run says if it applied (bf16)
        "cuda_graphs": graphs_mode,
        "padding": batches.stats,
        "isolated": args.isolate,
        "definition": {
            "tokens_per_sec": "non-pad source + target tokens of timed training steps / seconds",
            "mfu": "6 * parameters * tokens_per_sec / measured bf16 matmul rate",
            "mfu_sided": "6 * (encoder_params * src_tokens + decoder_params * tgt_tokens) "
            "/ seconds / measured bf16 matmul rate",
        },
        "runs": [],
    }
    peak = None
    if torch.cuda.is_available() and not args.isolate:
        peak = matmul_tflops()
        results["bf16_matmul_tflops"] = round(peak, 1)
        log.info("bf16 matmul: %.1f TFLOP/s", peak)
    deadline = time.monotonic() + args.max_seconds
    profiles: list[Callable[[], None]] = []  # run after every timed job (see `measure`)
    jobs = [(0, Job.parse(args.job))] if args.job else planned_jobs(args, archs, copies, graphs)
    for round_, job in jobs:
        arch, kind, compiled = job.arch, job.kind, job.compiled
        if time.monotonic() > deadline:
            log.warning("time budget spent: skipping %s %s", kind, arch)
            results["runs"].append(
                {"name": arch, "kind": kind, "round": round_, "skipped": "time budget"}
            )
            continue
        try:
            if args.isolate:
                run = run_isolated(args, cudnn, job)
            else:
                run, add_profile = run_job(
                    args, params, batches, vocab_size, peak, arch, kind, compiled, job.copies,
                    job.graphed,
                )  # fmt: skip
                if add_profile is not None and round_ == 0:
                    profiles.append(add_profile)
            run["round"] = round_
            results["runs"].append(run)
            results.update(speedups(results["runs"]))
            write_json(args.out, results)  # partial results survive a kill
        except Exception as err:  # one failing model must not lose the others' numbers
            log.exception("%s %s failed", kind, arch)
            results["runs"].append(
                {
                    "name": arch,
                    "kind": kind,
                    "compiled": compiled,
                    "round": round_,
                    "error": repr(err),
                }
            )
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    for add_profile in profiles:  # each model once, after every timed measurement
        add_profile()
    results.update(speedups(results["runs"]))
    rates = [r["bf16_matmul_tflops"] for r in results["runs"] if r.get("bf16_matmul_tflops")]
    if rates:
        results["bf16_matmul_tflops"] = round(statistics.median(rates), 1)
    return results


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def speedups(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """tokens/s of our model over MarianMTModel's at the same architecture, eager and compiled
    (and eager without bf16 weight copies, if measured): each round's ratio (ours and Marian
    measured in the same round) and their median."""
    done = [r for r in runs if "tokens_per_sec" in r]
    per_round: dict[str, list[float]] = {}
    for reference in (r for r in done if r["kind"] == "marian"):
        for ours in done:
            if ours["kind"] != "ours" or ours["arch"] != reference["arch"]:
                continue
            if ours["round"] != reference["round"]:
                continue
            mode = "compiled" if ours["compiled"] else "eager"
            mode = "cuda_graphs" if ours.get("cuda_graphs") else mode
            mode += "_without_weight_copies" if without_weight_copies(ours) else ""
            marian_mode = "compiled" if reference["compiled"] else "eager"
            key = f"ours_{mode}_vs_marian_{marian_mode}"
            ratio = round(ours["tokens_per_sec"] / reference["tokens_per_sec"], 3)
            per_round.setdefault(key, []).append(ratio)
    return {
        "speedup_vs_marian": {k: round(statistics.median(v), 3) for k, v in per_round.items()},
        "speedup_vs_marian_per_round": per_round,
    }


# ----------------------------------------------------------------------------- decoding


def decode(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.inference.translator import Translator
    from pipelines.stages.evaluate import read_pairs

    translator = Translator.load(args.model, device=args.device)
    sources, _ = read_pairs(args.prepared / f"{args.split}.jsonl")
    translator.translate(sources[:64], beam_size=args.beam, batch_size=args.batch_size)  # warm-up
    result: dict[str, Any] = {
        "environment": environment(),
        "model": str(args.model),
        "split": args.split,
        "beam_size": args.beam,
        "length_penalty": args.length_penalty,
        "runs": [],
    }
    for batch_size, count in ((args.batch_size, len(sources)), (1, args.unbatched_sentences)):
        subset = sources[:count]
        synchronize()
        start = time.perf_counter()
        translator.translate(
            subset,
            beam_size=args.beam,
            length_penalty=args.length_penalty,
            batch_size=batch_size,
        )
        synchronize()
        seconds = time.perf_counter() - start
        result["runs"].append(
            {
                "batch_size": batch_size,
                "sentences": len(subset),
                "seconds": round(seconds, 3),
                "sentences_per_sec": round(len(subset) / seconds, 1),
            }
        )
        log.info(
            "%s beam %d batch %d: %.1f sentences/s",
            args.model,
            args.beam,
            batch_size,
            len(subset) / seconds,
        )
    batched, single = result["runs"]
    result["batched_speedup"] = round(batched["sentences_per_sec"] / single["sentences_per_sec"], 2)
    return result


# ----------------------------------------------------------------------------- report


def time_to_bleu(history: Path) -> dict[str, Any]:
    """Wall-clock training seconds against validation BLEU from a run's history.csv."""
    with open(history, encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val_bleu")]
    if not rows:
        return {}
    curve = [(float(r["train_seconds"]), float(r["val_bleu"]), int(r["epoch"])) for r in rows]
    best_seconds, best_bleu, best_epoch = max(curve, key=lambda c: (c[1], -c[0]))
    summary = {
        "epochs": len(curve),
        "best_val_bleu": best_bleu,
        "best_epoch": best_epoch,
        "seconds_to_best": best_seconds,
        "total_seconds": curve[-1][0],
        "curve": [{"seconds": s, "val_bleu": b, "epoch": e} for s, b, e in curve],
    }
    for fraction in (0.95, 0.99):
        reached = next(s for s, b, _ in curve if b >= fraction * best_bleu)
        summary[f"seconds_to_{int(fraction * 100)}pct_of_best"] = reached
    return summary


def report(args: argparse.Namespace) -> dict[str, Any]:
    """Gather every run folder under `args.results` (training.json, history, metrics), keyed
    "<folder>/<arch>"."""
    runs = {}
    for training in sorted(args.results.glob("*/artifacts/*/training.json")):
        job = training.parents[2]
        arch = training.parent.name
        entry: dict[str, Any] = {"training": json.loads(training.read_text())}
        history = job / "logs" / arch / "history.csv"
        if history.exists():
            entry["time_to_bleu"] = time_to_bleu(history)
        metrics = job / "metrics" / f"{arch}.json"
        if metrics.exists():
            entry["test"] = {
                split: {"bleu": v["bleu"], "chrf": v["chrf"], "signature": v["signature"]}
                for split, v in json.loads(metrics.read_text()).items()
            }
        runs[f"{job.name}/{arch}"] = entry
    return {"runs": runs}


# ----------------------------------------------------------------------------- MLflow


def metric_label(run: dict[str, Any]) -> str:
    """An MLflow-safe metric prefix for one measured model: 'marian(x)' -> 'marian_x'."""
    label = run["name"].replace("(", "_").replace(")", "")
    label += "_without_weight_copies" if without_weight_copies(run) else ""
    label += "_cuda_graphs" if run.get("cuda_graphs") else ""
    return label + ("_compiled" if run.get("compiled") else "")


def log_to_mlflow(command: str, result: dict[str, Any], out: Path, dataset: str) -> str:
    """One run in the MLflow experiment 'benchmarks': code, data and software versions and the
    device as tags, the settings as params, every figure as a metric (rounds as steps), the
    JSON as an artifact. Returns the run id."""
    from pipelines.tracking import runs

    client = runs.connect()
    experiment = runs.experiment_id(client, "benchmarks")
    tags = {**runs.lineage_tags(dataset), "benchmark": command}
    run_id = client.create_run(experiment, run_name=f"bench {command}", tags=tags).info.run_id
    settings = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))}
    environment = result["environment"].items()
    settings.update({f"env.{k}": v for k, v in environment if v is not None and k != "date"})
    runs.log_params(client, run_id, settings)
    if command == "throughput":
        figures = ("tokens_per_sec", "ms_per_step", "peak_memory_gib", "peak_reserved_gib", "mfu",
                   "mfu_sided", "gpu_busy_fraction")  # fmt: skip
        for run in result["runs"]:
            for figure in figures:
                if run.get(figure) is not None:
                    key = f"{metric_label(run)}/{figure}"
                    client.log_metric(run_id, key, run[figure], step=run["round"])
        for key, ratio in result.get("speedup_vs_marian", {}).items():
            client.log_metric(run_id, f"speedup/{key}", ratio)
    else:
        for run in result["runs"]:
            key = "batched" if run["batch_size"] > 1 else "one_at_a_time"
            client.log_metric(run_id, f"{key}/sentences_per_sec", run["sentences_per_sec"])
    client.log_artifact(run_id, str(out))
    client.set_terminated(run_id)
    return run_id


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tp = sub.add_parser("throughput", help="training tokens/s, peak memory, MFU; vs Marian")
    tp.add_argument("--params", type=Path, default=Path("profiles/gpu.yaml"))
    tp.add_argument("--tokenized", type=Path, default=Path("data/tokenized"))
    tp.add_argument("--archs", nargs="*", help="entries of `models` (default: all)")
    tp.add_argument("--marian", default="transformer_base", help="arch Marian mirrors ('' off)")
    tp.add_argument("--compile", nargs="*", help="archs also measured with torch.compile")
    tp.add_argument("--compile-marian", action="store_true")
    tp.add_argument("--batch-tokens", type=int, default=0, help="default: train.batch_tokens")
    tp.add_argument("--warmup", type=int, default=10)
    tp.add_argument("--steps", type=int, default=40)
    tp.add_argument("--repeats", type=int, default=3, help="timed passes per measurement")
    tp.add_argument(
        "--rounds", type=int, default=1, help="measure the eager models this many times, in turn"
    )
    tp.add_argument(
        "--cudnn-sdpa",
        choices=("on", "off"),
        help="SDPA's cuDNN backend for all models (default: the params' train.cudnn_attention)",
    )
    tp.add_argument(
        "--profile-steps",
        type=int,
        default=5,
        help="steps profiled for kernel count and GPU kernel time per step (0: none; CUDA only)",
    )
    tp.add_argument(
        "--isolate",
        action="store_true",
        help="measure every job in a fresh Python process (no job runs after another in a process)",
    )
    tp.add_argument(
        "--low-precision-weights",
        choices=("on", "off", "both"),
        help="our eager models keep bf16 weight copies between steps, or let autocast cast every "
        "call, or are measured both ways in each round (default: train.low_precision_weights)",
    )
    tp.add_argument(
        "--cuda-graphs",
        choices=("on", "off", "both"),
        help="our models replay CUDA graphs of the loss's forward and backward per batch shape "
        "(without weight copies), run eagerly, or are measured both ways in each round (default: "
        "train.cuda_graphs; CUDA only)",
    )
    tp.add_argument(
        "--job",
        help="ARCH,ours|marian,eager|compiled|graphed,copies|casts: measure only this (as "
        "--isolate does)",
    )
    tp.add_argument("--max-seconds", type=float, default=400, help="skip jobs after this")
    tp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    tp.add_argument("--out", type=Path, required=True)
    tp.add_argument("--mlflow", action="store_true", help=MLFLOW_HELP)
    dp = sub.add_parser("decode", help="beam-search sentences/s, batched and one at a time")
    dp.add_argument("--model", type=Path, required=True, help="an exported artifacts/<arch>")
    dp.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    dp.add_argument("--split", default="test_2016_flickr")
    dp.add_argument("--beam", type=int, default=5)
    dp.add_argument("--length-penalty", type=float, default=0.6)
    dp.add_argument("--batch-size", type=int, default=64)
    dp.add_argument("--unbatched-sentences", type=int, default=100)
    dp.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    dp.add_argument("--out", type=Path, required=True)
    dp.add_argument("--mlflow", action="store_true", help=MLFLOW_HELP)
    dp.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="for --mlflow's data version tag"
    )
    rp = sub.add_parser("report", help="time-to-BLEU and test scores of finished runs")
    rp.add_argument("results", type=Path, help="a folder of run folders (jobs)")
    rp.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler = {"throughput": throughput, "decode": decode, "report": report}[args.command]
    result = handler(args)
    write_json(args.out, result)
    if getattr(args, "mlflow", False):
        dataset = load_params(args.params).data.dataset
        run_id = log_to_mlflow(args.command, result, args.out, dataset)
        log.info("logged to MLflow experiment 'benchmarks', run %s", run_id)
    if args.command == "throughput":
        print_throughput_table(result, sys.stdout)


def without_weight_copies(run: dict[str, Any]) -> bool:
    """Our eager model in bf16, measured with autocast's per-call casts instead of the copies."""
    return (
        run.get("kind") == "ours"
        and bool(run.get("autocast_bf16"))
        and not run.get("compiled")
        and not run.get("cuda_graphs")
        and not run.get("low_precision_weights")
    )


def run_label(run: dict[str, Any]) -> str:
    """The model's name, how it ran (compiled; autocast casts instead of bf16 weight copies) and
    the round."""
    label = run["name"] + (" +compile" if run.get("compiled") else "")
    label += " +graphs" if run.get("cuda_graphs") else ""
    label += " -copies" if without_weight_copies(run) else ""
    if run.get("round"):
        label += f" (round {run['round'] + 1})"
    return label


def print_throughput_table(result: dict[str, Any], stream) -> None:
    stream.write(
        f"\n{result['environment']['device']}  torch {result['environment']['torch']}  "
        f"cuDNN SDPA {result['sdpa_cudnn_enabled']}  "
        f"bf16 matmul {result.get('bf16_matmul_tflops')} TFLOP/s  batch_tokens "
        f"{result['batch_tokens']}  padding {result['padding']['padding_fraction']:.3f}\n"
    )
    stream.write(
        f"{'model':32s} {'params':>8s} {'tok/s':>10s} {'ms/step':>8s} {'GiB':>6s} {'resGiB':>6s} "
        f"{'MFU':>6s} {'sided':>6s} {'syncs':>5s} {'kernels':>7s} {'GPU ms':>7s} {'busy':>5s}\n"
    )
    for run in result["runs"]:
        label = run_label(run)
        if "tokens_per_sec" not in run:
            stream.write(f"{label:32s} {run.get('error') or run.get('skipped')}\n")
            continue
        stream.write(
            f"{label:32s} {run['parameters'] / 1e6:7.1f}M {run['tokens_per_sec']:10.0f} "
            f"{run['ms_per_step']:8.2f} {run.get('peak_memory_gib', 0):6.2f} "
            f"{run.get('peak_reserved_gib', 0):6.2f} "
            f"{run.get('mfu', 0):6.3f} {run.get('mfu_sided', 0):6.3f} "
            f"{run['host_syncs_per_step']!s:>5s} "
            f"{run.get('profile', {}).get('kernels_per_step', '-')!s:>7s} "
            f"{run.get('profile', {}).get('gpu_kernel_ms_per_step', '-')!s:>7s} "
            f"{run.get('gpu_busy_fraction', '-')!s:>5s}\n"
        )
    stream.write(
        f"speedup vs Marian (median): {result.get('speedup_vs_marian')}; per round: "
        f"{result.get('speedup_vs_marian_per_round')}\n"
    )


if __name__ == "__main__":
    main()
