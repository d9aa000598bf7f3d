"""Part 1, cost against length: forward+backward time and memory of one layer of each family
and of each whole model at a fixed number of tokens per batch, their growth exponents, the
sequential operations of each layer and where self-attention stops being the cheaper layer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.factory import build_model
from models.vocab import BOS_ID
from pipelines.core.study_params import StudyParams
from pipelines.study.claims import Claim, verdict_of_checks
from pipelines.study.figures import Panel, line_panels
from pipelines.study.fits import crossing, fit_power_law, power_law_crossing, upper_half
from pipelines.study.graph_depth import autograd_depth
from pipelines.study.layers import FamilyLayer, family_layers
from pipelines.study.part import PartResult, markdown_table, two_decimals
from pipelines.study.synthetic import FIRST_SYMBOL
from pipelines.study.timing import StepCost, measure_steps
from pipelines.study.variants import FAMILY_NAMES, family_configs
from pipelines.training.loss import token_mean_loss

log = logging.getLogger("nmt.study")

# A measured exponent within this of the prediction counts as agreeing with it.
EXPONENT_TOLERANCE = 0.25
# The crossover agrees with the seed's n = d if it lies within this factor of d.
CROSSOVER_FACTOR = 4.0
CROSSOVER_OTHERS = ("recurrent", "convolutional")
SEED_CLAIMS = {
    "Complexity per layer": "self-attention O(n²·d) / recurrent O(n·d²) / convolutional O(k·n·d²)",
    "Sequential operations": "self-attention O(1) / recurrent O(n) / convolutional O(1)",
    "Crossover": "self-attention is faster than a recurrent layer while n < d",
}


@dataclass(frozen=True)
class Measurement:
    """One subject (a layer or a whole model) at one length."""

    subject: str
    length: int
    batch: int  # sequences of `length` tokens in the batch
    cost: StepCost

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    @property
    def microseconds_per_token(self) -> float:
        return 1e6 * self.cost.seconds / self.tokens

    @property
    def saved_bytes_per_token(self) -> float:
        return self.cost.saved_bytes / self.tokens


Step = tuple[Callable[[], torch.Tensor], torch.nn.Module]


def _batch(length: int, study: StudyParams) -> int:
    """Sequences of `length` tokens in a batch of `study.batch_tokens` (at least one)."""
    return max(1, study.batch_tokens // length)


def layer_step(layer: FamilyLayer, length: int, study: StudyParams, device: torch.device) -> Step:
    """A training step of one layer on random vectors [batch, n, d]."""
    x = torch.randn(_batch(length, study), length, study.d_model, device=device)  # [B, n, d]
    return (lambda: layer.forward(x).mean()), layer.module


def model_step(
    model: torch.nn.Module, length: int, study: StudyParams, device: torch.device
) -> Step:
    """A training step of a whole model on random tokens, source and target `length` long."""
    shape = (_batch(length, study), length)
    src = torch.randint(FIRST_SYMBOL, study.vocab_size, shape, device=device)
    tgt_out = torch.randint(FIRST_SYMBOL, study.vocab_size, shape, device=device)
    tgt_in = torch.cat([torch.full_like(tgt_out[:, :1], BOS_ID), tgt_out[:, :-1]], dim=1)
    return (lambda: token_mean_loss(model(src, tgt_in), tgt_out, 0.0)[0]), model


def sequential_steps(
    layer: FamilyLayer, length: int, study: StudyParams, device: torch.device
) -> int:
    """Operations on the longest dependency chain of the layer at `length` (batch of one)."""
    return autograd_depth(layer.stepwise(torch.randn(1, length, study.d_model, device=device)))


def _exponent(lengths: list[int], values: list[float]) -> float:
    chosen = upper_half(lengths)
    return fit_power_law([lengths[i] for i in chosen], [values[i] for i in chosen]).exponent


def run_cost(study: StudyParams, device: torch.device, figures: Path) -> PartResult:
    """Measure every layer and whole model at every length; claims, tables and two plots."""
    torch.manual_seed(study.seed)
    lengths = sorted(study.lengths)
    layers = family_layers(study.d_model, study.n_heads, study.kernel_size)
    for layer in layers:
        layer.module.to(device)
    models = {
        name: build_model(config, study.vocab_size).to(device)
        for name, config in family_configs(study).items()
    }
    steps: dict[tuple[str, int], Step] = {}
    for length in lengths:
        for layer in layers:
            steps[layer.family, length] = layer_step(layer, length, study, device)
        for name, model in models.items():
            steps[name, length] = model_step(model, length, study, device)
    log.info("cost: %d steps, %d timed rounds", len(steps), study.repeats)
    costs = measure_steps(steps, device, study.repeats)

    def rows(subject: str) -> list[Measurement]:
        return [Measurement(subject, n, _batch(n, study), costs[subject, n]) for n in lengths]

    layer_rows = {layer.family: rows(layer.family) for layer in layers}
    model_rows = {name: rows(name) for name in models}
    depths = {
        layer.family: [sequential_steps(layer, n, study, device) for n in lengths]
        for layer in layers
    }
    return _result(study, device, lengths, layers, layer_rows, model_rows, depths, figures)


@dataclass(frozen=True)
class Exponents:
    """Growth exponents of one layer: measured time, FLOP count and memory per token over the
    upper half of the lengths, and the sequential chain over all of them."""

    time: float
    flops: float
    memory: float
    chain: float


def _result(
    study: StudyParams,
    device: torch.device,
    lengths: list[int],
    layers: list[FamilyLayer],
    layer_rows: dict[str, list[Measurement]],
    model_rows: dict[str, list[Measurement]],
    depths: dict[str, list[int]],
    figures: Path,
) -> PartResult:
    fitted = {
        layer.family: Exponents(
            _exponent(lengths, [m.microseconds_per_token for m in layer_rows[layer.family]]),
            _exponent(lengths, [layer.flops_per_token(n) for n in lengths]),
            _exponent(lengths, [m.saved_bytes_per_token for m in layer_rows[layer.family]]),
            fit_power_law(lengths, depths[layer.family]).exponent,
        )
        for layer in layers
    }
    model_exponents = {
        name: _exponent(lengths, [m.microseconds_per_token for m in rows])
        for name, rows in model_rows.items()
    }
    top = [lengths[i] for i in upper_half(lengths)]
    span = f"n = {top[0]}–{top[-1]}"
    crossovers = {other: _crossover(lengths, layer_rows, other) for other in CROSSOVER_OTHERS}
    claims = [
        _complexity_claim(fitted, span, study.d_model),
        _sequential_claim(layers, fitted, depths, lengths[-1]),
        _crossover_claim(crossovers, study.d_model, device),
    ]
    _plots(lengths, layer_rows, model_rows, figures)
    lines = _tables(study, device, lengths, layers, layer_rows, model_rows, depths)
    lines += [
        "",
        f"Growth exponents over {span} (time and saved activations per token; the sequential "
        "chain over all lengths):",
        "",
        *markdown_table(
            ["subject", "time exponent", "FLOP-count exponent", "memory exponent",
             "chain exponent"],
            [[f, e.time, e.flops, e.memory, e.chain] for f, e in fitted.items()]
            + [[FAMILY_NAMES[n], e, None, None, None] for n, e in model_exponents.items()],
        ),
        "",
        "![time per token](study/cost_time.png)",
        "![memory per token](study/cost_memory.png)",
    ]  # fmt: skip
    metrics = {
        f"cost/{family}/{key}_exponent": value
        for family, exponents in fitted.items()
        for key, value in asdict(exponents).items()
    }
    metrics |= {f"cost/{name}/time_exponent": e for name, e in model_exponents.items()}
    metrics |= {
        f"cost/crossover_{other}": at for other, (at, _) in crossovers.items() if at is not None
    }
    for rows in [*layer_rows.values(), *model_rows.values()]:
        for m in rows:
            metrics[f"cost/{m.subject}/n{m.length}/us_per_token"] = m.microseconds_per_token
    return PartResult(
        "cost", "Cost against length", claims, lines, ["cost_time.png", "cost_memory.png"], metrics
    )


def _complexity_claim(fitted: dict[str, Exponents], span: str, d_model: int) -> Claim:
    agree = [abs(e.time - e.flops) <= EXPONENT_TOLERANCE for e in fitted.values()]
    return Claim(
        "Complexity per layer",
        SEED_CLAIMS["Complexity per layer"],
        f"time per token ∝ n^e ({span}, d = {d_model}): "
        + ", ".join(
            f"{family} e = {two_decimals(e.time)} (FLOP count: {two_decimals(e.flops)})"
            for family, e in fitted.items()
        ),
        verdict_of_checks(sum(agree), len(agree)),
        f"supported when every family's measured exponent is within {EXPONENT_TOLERANCE} of "
        "its FLOP count's over the same lengths (per token, the seed's orders are n·d, d², k·d²)",
    )


def _sequential_claim(
    layers: list[FamilyLayer], fitted: dict[str, Exponents], depths: dict[str, list[int]], n: int
) -> Claim:
    agree = [
        abs(fitted[layer.family].chain - layer.sequential_exponent) <= EXPONENT_TOLERANCE
        for layer in layers
    ]
    return Claim(
        "Sequential operations",
        SEED_CLAIMS["Sequential operations"],
        f"longest autograd chain at n = {n}: "
        + ", ".join(
            f"{layer.family} {depths[layer.family][-1]} "
            f"(∝ n^{two_decimals(fitted[layer.family].chain)})"
            for layer in layers
        ),
        verdict_of_checks(sum(agree), len(agree)),
        f"supported when each chain grows as n^e with e within {EXPONENT_TOLERANCE} of the "
        "seed's order (0, 1, 0); the LSTM is counted unrolled, one cell step per position",
    )


def _crossover_claim(
    crossovers: dict[str, tuple[float | None, str]], d_model: int, device: torch.device
) -> Claim:
    at, _ = crossovers["recurrent"]
    if at is None:
        verdict = "not measured"
    elif 1 / CROSSOVER_FACTOR <= at / d_model <= CROSSOVER_FACTOR:
        verdict = "supported"
    elif 1 / CROSSOVER_FACTOR**2 <= at / d_model <= CROSSOVER_FACTOR**2:
        verdict = "mixed"
    else:
        verdict = "not supported"
    return Claim(
        "Crossover",
        SEED_CLAIMS["Crossover"],
        f"self-attention's step time meets the LSTM's {crossovers['recurrent'][1]} and the "
        f"convolution's {crossovers['convolutional'][1]}; d = {d_model} on {device.type}",
        verdict,
        f"supported when the crossover with the LSTM lies within a factor {CROSSOVER_FACTOR:g} "
        f"of d, mixed within {CROSSOVER_FACTOR**2:g}",
    )


def _plots(
    lengths: list[int],
    layer_rows: dict[str, list[Measurement]],
    model_rows: dict[str, list[Measurement]],
    figures: Path,
) -> None:
    """Time and saved activations per token against length, log-log: layers, whole models."""
    for name, value, label in [
        ("cost_time.png", lambda m: m.microseconds_per_token, "µs per token (forward+backward)"),
        ("cost_memory.png", lambda m: m.saved_bytes_per_token / 1024, "saved KiB per token"),
    ]:
        line_panels(
            [
                Panel("One layer", "length n", label, log=True, series={
                    f: (lengths, [value(m) for m in rows]) for f, rows in layer_rows.items()
                }),
                Panel("Whole models", "length n", label, log=True, series={
                    FAMILY_NAMES[n]: (lengths, [value(m) for m in rows])
                    for n, rows in model_rows.items()
                }),
            ],
            figures / name,
        )  # fmt: skip


def _crossover(
    lengths: list[int], layer_rows: dict[str, list[Measurement]], other: str
) -> tuple[float | None, str]:
    """Where self-attention's step time rises to `other`'s: measured between two lengths, or
    extrapolated from the fitted power laws when it does not happen within the lengths."""
    attention = [m.cost.seconds for m in layer_rows["self-attention"]]
    reference = [m.cost.seconds for m in layer_rows[other]]
    found = crossing(lengths, attention, reference)
    if found is not None:
        return found, f"at n ≈ {found:.0f} (measured)"
    if attention[0] >= reference[0]:
        return None, f"nowhere: it is already slower at n = {lengths[0]}"
    extrapolated = power_law_crossing(
        fit_power_law(lengths, attention), fit_power_law(lengths, reference)
    )
    if extrapolated is None or extrapolated <= lengths[-1]:
        return None, f"nowhere up to n = {lengths[-1]} (and the fits do not meet beyond)"
    return extrapolated, f"at n ≈ {extrapolated:.0f} (extrapolated beyond n = {lengths[-1]})"


def _tables(
    study: StudyParams,
    device: torch.device,
    lengths: list[int],
    layers: list[FamilyLayer],
    layer_rows: dict[str, list[Measurement]],
    model_rows: dict[str, list[Measurement]],
    depths: dict[str, list[int]],
) -> list[str]:
    cuda = device.type == "cuda"
    header = ["subject", "n", "batch", "ms per step", "µs per token", "saved MiB"]
    header += ["peak MiB"] if cuda else []
    rows = []
    for name, measurements in [*layer_rows.items(), *model_rows.items()]:
        for m in measurements:
            row = [FAMILY_NAMES.get(name, name), m.length, m.batch, 1e3 * m.cost.seconds]
            row += [m.microseconds_per_token, m.cost.saved_bytes / 2**20]
            row += [m.cost.peak_bytes / 2**20] if cuda else []
            rows.append(row)
    memory = "saved MiB: tensors autograd keeps for the backward pass" + (
        "; peak MiB: CUDA peak allocation during the step" if cuda else ""
    )
    return [
        f"Forward+backward of one training step at {study.batch_tokens} tokens per batch, "
        f"fastest of {study.repeats} repeats, d = {study.d_model}, {study.n_heads} heads, "
        f"kernel {study.kernel_size}, whole models with {study.layers}+{study.layers} layers and "
        f"{study.vocab_size} target words, on {device.type}; {memory}.",
        "",
        *markdown_table(header, rows),
        "",
        "Sequential operations (longest autograd chain, batch of one):",
        "",
        *markdown_table(
            ["layer", *[f"n = {n}" for n in lengths]],
            [[layer.family, *depths[layer.family]] for layer in layers],
        ),
    ]
