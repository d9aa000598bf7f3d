"""One GPU session, scripted: environment, GPU tests, throughput benchmark, then training runs of
the real stages (``pipelines.stages.train`` with a wall-clock budget, ``budget.unit: seconds``,
then ``pipelines.stages.evaluate --device cuda``, then the decoding benchmark), all inside one
deadline.

Every run works in its own folder (``<work>/<run>``: the code linked, data/prepared and
data/tokenized linked, its own params.yaml, with the run's budget, and MLflow store), so runs may
share the GPU. What a session produced is packed into ``<out>/results.tar.gz`` (no weights or
checkpoints) with the session log; ``python -m benchmarks.bench report`` turns the unpacked
folder into tables.

    python -m benchmarks.gpu_session --plan final --out "$OUT" --deadline-s 560
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.params import deep_update

log = logging.getLogger("nmt.session")

REPO = Path(__file__).resolve().parents[1]
LINKED = ("models", "pipelines", "benchmarks")


@dataclass
class Run:
    """One training run: an architecture of the profile, with optional overrides."""

    name: str
    arch: str
    budget_s: float
    overrides: dict[str, Any] = field(default_factory=dict)
    decode_bench: bool = False


def _lstm_nf(arch: str) -> dict[str, Any]:
    """No input feeding, more patience (BLEU of a young LSTM is noisy)."""
    return {
        "models": {
            arch: {
                "model": {"input_feeding": False},
                "optim": {"early_stopping_patience": 20},
            }
        }
    }


# The sweep runs concurrently (timings are upper bounds); the final runs one at a time.
PLANS: dict[str, dict[str, Any]] = {
    "sweep": {
        "gpu_tests": False,
        "bench": None,
        "concurrent": True,
        "runs": [
            Run("t4_b8k", "transformer", 400),
            Run(
                "t4_b4k",
                "transformer",
                400,
                {
                    "train": {"batch_tokens": 4096},
                    "models": {"transformer": {"optim": {"warmup_steps": 1000}}},
                },
            ),
            Run(
                "t3_b8k_lr15",
                "transformer",
                400,
                {
                    "models": {
                        "transformer": {
                            "model": {"encoder_layers": 3, "decoder_layers": 3},
                            "optim": {"lr": 0.0015},
                        }
                    }
                },
            ),
            Run("ladd_b8k", "lstm_additive", 400),
            Run("ladd_b4k", "lstm_additive", 400, {"train": {"batch_tokens": 4096}}),
            Run("lnone_b8k", "lstm_none", 400),
        ],
    },
    "lstm": {  # LSTMs without input feeding: the decoder is one cuDNN call (concurrent runs)
        "gpu_tests": False,
        "bench": None,
        "concurrent": True,
        "runs": [
            Run("ladd_nf", "lstm_additive", 420, _lstm_nf("lstm_additive")),
            Run("lmul_nf", "lstm_multiplicative", 420, _lstm_nf("lstm_multiplicative")),
            Run("lnone_nf", "lstm_none", 420, _lstm_nf("lstm_none")),
            Run(
                "ladd_nf_b4k",
                "lstm_additive",
                420,
                deep_update(_lstm_nf("lstm_additive"), {"train": {"batch_tokens": 4096}}),
            ),
        ],
    },
    "smoke": {  # a CPU dry run of the whole session: --device cpu and a tiny profile
        "gpu_tests": True,
        "bench": ["--steps", "2", "--warmup", "1", "--repeats", "1", "--max-seconds", "60"],
        "concurrent": False,
        "runs": [Run("transformer", "transformer", 30, decode_bench=True)],
    },
    "final": {
        "gpu_tests": False,
        "bench": ["--compile", "transformer_base", "--compile-marian", "--max-seconds", "150"],
        "bench_after": 180,  # seconds kept for the benchmark after the runs
        "concurrent": False,
        "runs": [Run("transformer", "transformer", 300, decode_bench=True)],
    },
    "transformer_final": {  # the profile's Transformer alone, no benchmark
        "gpu_tests": False,
        "bench": None,
        "concurrent": False,
        "runs": [Run("transformer", "transformer", 280, decode_bench=True)],
    },
    "lstm_final": {  # the profile's LSTMs, one at a time
        "gpu_tests": False,
        "bench": None,
        "concurrent": False,
        "runs": [
            Run("lstm_additive", "lstm_additive", 170, decode_bench=True),
            Run("lstm_multiplicative", "lstm_multiplicative", 160),
            Run("lstm_none", "lstm_none", 140),
        ],
    },
}


def make_workdir(work: Path, run: Run, profile: dict[str, Any], max_time_s: float) -> Path:
    """The run's folder; its params.yaml trains `run.arch` for at most `max_time_s` seconds."""
    folder = work / run.name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "data").mkdir(parents=True)
    for name in LINKED:
        (folder / name).symlink_to(REPO / name)
    for name in ("prepared", "tokenized"):
        (folder / "data" / name).symlink_to(REPO / "data" / name)
    shutil.copy2(REPO / "dvc.yaml", folder / "dvc.yaml")  # marks the root of the MLflow store
    params = deep_update(copy.deepcopy(profile), run.overrides)
    params["architectures"] = [run.arch]
    params["budget"] = {"unit": "seconds", "value": max_time_s}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def run_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def first_seed() -> int:
    """The seed the stages train with when none is given: the profile's first."""
    return yaml.safe_load((REPO / "profiles" / "gpu.yaml").read_text())["seeds"][0]


def commands(run: Run, device: str = "cuda") -> list[list[str]]:
    py = sys.executable
    stage = ["--arch", run.arch, "--params", "params.yaml"]
    cmds = [
        [py, "-m", "pipelines.stages.train", *stage],
        [py, "-m", "pipelines.stages.evaluate", *stage, "--device", device],
    ]
    if run.decode_bench:
        model = f"artifacts/{run.arch}-{first_seed()}"
        bench = [py, "-m", "benchmarks.bench", "decode", "--model", model, "--device", device]
        cmds.append([*bench, "--out", "decode.json"])
    return cmds


class RunProcess:
    """The run's commands one after the other, each started when the previous one succeeded."""

    def __init__(self, run: Run, folder: Path, deadline: float, device: str) -> None:
        self.run, self.folder, self.deadline = run, folder, deadline
        self.pending = commands(run, device)
        self.timings: list[dict[str, Any]] = []
        self.process: subprocess.Popen | None = None
        self.log = open(folder / "run.log", "w")  # noqa: SIM115  (closed in poll)
        self.started = 0.0
        self.failed = False
        self._next()

    def _next(self) -> None:
        cmd = self.pending.pop(0)
        self.log.write(f"$ {' '.join(cmd)}\n")
        self.log.flush()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            cmd, cwd=self.folder, env=run_env(self.folder), stdout=self.log, stderr=self.log
        )
        self.timings.append({"command": cmd[2], "started": time.time()})

    def poll(self) -> bool:
        """Advance; True once finished (done, failed or killed at the deadline)."""
        if self.process is None:
            return True
        code = self.process.poll()
        if code is None:
            if time.monotonic() > self.deadline:
                self.process.kill()
                self.process.wait()
                code = -9
                self.timings[-1]["killed_at_deadline"] = True
            else:
                return False
        self.timings[-1].update(returncode=code, seconds=round(time.monotonic() - self.started, 1))
        if code == 0 and self.pending:
            self._next()
            return False
        self.failed = code != 0
        self.process = None
        self.log.close()
        (self.folder / "timings.json").write_text(json.dumps(self.timings, indent=2))
        return True


def start_run(
    run: Run,
    profile: dict[str, Any],
    work: Path,
    deadline: float,
    eval_reserve_s: float,
    device: str,
) -> RunProcess:
    """The run in its folder, training for its budget or what is left before `deadline` less
    `eval_reserve_s` for evaluation (10 s at least), whichever is shorter."""
    budget = min(run.budget_s, deadline - time.monotonic() - eval_reserve_s)
    max_time_s = float(round(max(budget, 10.0)))
    log.info("%s: training budget %.0f s", run.name, max_time_s)
    return RunProcess(run, make_workdir(work, run, profile, max_time_s), deadline, device)


def run_plan(
    plan: dict[str, Any], profile: dict[str, Any], work: Path, deadline: float, device: str
) -> None:
    runs: list[Run] = plan["runs"]
    if plan["concurrent"]:
        active = [start_run(r, profile, work, deadline, 90, device) for r in runs]
        while not all(p.poll() for p in active):
            time.sleep(2)
        for process in active:
            log.info("%s: %s", process.run.name, process.timings)
        return
    for run in runs:
        if time.monotonic() > deadline - 60:
            log.warning("deadline: %s not started", run.name)
            continue
        process = start_run(run, profile, work, deadline, 60, device)
        while not process.poll():
            time.sleep(1)
        log.info("%s: %s", run.name, process.timings)


def shell(cmd: list[str], out: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run `cmd` in the repository, its output appended to `out`; the return code (or -9)."""
    with open(out, "a") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        try:
            done = subprocess.run(
                cmd, cwd=REPO, stdout=handle, stderr=handle, timeout=max(timeout, 1), env=env
            )
            return done.returncode
        except subprocess.TimeoutExpired:
            handle.write(f"timed out after {timeout:.0f}s\n")
            return -9
        except OSError as err:  # e.g. no nvidia-smi
            handle.write(f"{err}\n")
            return -1


KEEP_SUFFIXES = (".json", ".csv", ".txt", ".log", ".yaml", ".db")


def pack(work: Path, out: Path) -> Path:
    """Small result files of every run (no weights, checkpoints or plots) into one tarball."""
    target = out / "results.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            relative = path.relative_to(work)
            if relative.parts[1:2] and relative.parts[1] in (*LINKED, "data", "checkpoints"):
                continue
            if path.is_symlink() or not path.is_file() or path.suffix not in KEEP_SUFFIXES:
                continue
            tar.add(path, arcname=str(relative))
    return target


ENVIRONMENT_REPORT = (
    "import torch, lightning, mlflow, sacrebleu, transformers, sys; "
    "print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, "
    "'cudnn', torch.backends.cudnn.version()); print('lightning', lightning.__version__,"
    " 'mlflow', mlflow.__version__, 'sacrebleu', sacrebleu.__version__, 'transformers', "
    "transformers.__version__)"
)


def log_environment(work: Path) -> None:
    """The GPU and the versions of the libraries, into <work>/environment.log and the log."""
    env_log = work / "environment.log"
    shell(["nvidia-smi"], env_log, 30)
    shell([sys.executable, "-c", ENVIRONMENT_REPORT], env_log, 60)
    log.info("environment: %s", env_log.read_text()[-600:])


def run_gpu_tests(work: Path) -> None:
    code = shell(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_fast_paths.py",
         "tests/test_cuda_graphs.py", "-p", "no:cacheprovider"],
        work / "gpu_tests.log",
        120,
    )  # fmt: skip
    log.info("GPU tests: exit %s", code)


def run_throughput_bench(plan: dict[str, Any], profile: Path, work: Path, timeout: float) -> None:
    bench_out = work / "bench_throughput.json"
    bench = [sys.executable, "-m", "benchmarks.bench", "throughput"]
    code = shell(
        [*bench, "--params", str(profile), "--out", str(bench_out), *plan["bench"]],
        work / "bench_throughput.log",
        timeout,
    )
    log.info("throughput benchmark: exit %s", code)


def report_and_pack(work: Path, out: Path) -> Path:
    """`bench report` over the runs, the packed results, and the benchmark's JSON files in `out`."""
    report = work / "report.json"
    shell(
        [sys.executable, "-m", "benchmarks.bench", "report", str(work), "--out", str(report)],
        work / "report.log",
        30,
    )
    tarball = pack(work, out)
    for name in ("bench_throughput.json", "report.json"):
        if (work / name).exists():
            shutil.copy2(work / name, out / name)
    return tarball


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_session", description=__doc__)
    parser.add_argument("--plan", choices=sorted(PLANS), required=True)
    parser.add_argument("--profile", type=Path, default=REPO / "profiles" / "gpu.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/nmt_runs"))
    parser.add_argument("--deadline-s", type=float, default=560)
    parser.add_argument("--device", default="cuda", help="for evaluate and decode (cpu: dry run)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.deadline_s
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(args.out / "session.log")],
    )
    plan = PLANS[args.plan]
    profile = yaml.safe_load(args.profile.read_text())
    log_environment(args.work)
    if plan["gpu_tests"]:
        run_gpu_tests(args.work)
    if plan.get("bench_after"):  # the runs first: the benchmark gets what time is left
        run_plan(plan, profile, args.work, deadline - plan["bench_after"], args.device)
    if plan["bench"] is not None:
        reserve = 20 if plan.get("bench_after") else 200
        timeout = min(420, deadline - time.monotonic() - reserve)
        run_throughput_bench(plan, args.profile, args.work, timeout)
    if not plan.get("bench_after"):
        run_plan(plan, profile, args.work, deadline, args.device)
    tarball = report_and_pack(args.work, args.out)
    log.info("packed %s (%.1f MB) after %.0f s", tarball, tarball.stat().st_size / 1e6,
             time.monotonic() - start)  # fmt: skip


if __name__ == "__main__":
    main()
