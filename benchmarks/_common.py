"""Shared helpers for the benchmark scripts (not a benchmark itself).

- ``machine_info()``: what the figures were measured on (cores, CPU model, RAM, torch, threads,
  load average at the time), printed at the top of every benchmark;
- ``Timer``: wall and process CPU time of a block;
- ``run_worker()``: run a command in a subprocess and read back the JSON it prints on a line
  starting with ``RESULT``, plus the wall time the parent saw and the child's peak RSS;
- ``fit_exponent()``: least-squares slope of log(time) vs log(size).
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT_TAG = "RESULT "

# Offline and quiet for every benchmark and every subprocess it starts.
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
}
for _k, _v in QUIET_ENV.items():
    os.environ.setdefault(_k, _v)


def ensure_repo_on_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# The SAEBench benchmarks' toy world (bench_eval_shared, bench_marginal_variant, bench_llm_cache): built in seconds.
EVAL_TOY_WORLD = {"seed": 0, "n_documents": 3000, "vocab_size": 1024, "n_layer": 2, "d_model": 64, "n_head": 4,
                  "n_ctx": 64, "train_steps": 150, "batch_size": 16}


def sampled_topk_sae(hooked_model, hook: str, seed: int, d_sae: int, k: int, context_size: int, *,
                     relative_noise: bool = True):
    """An untrained sae-lens TopK SAE whose directions are the hook's own (centred) activations plus noise: live
    latents on any model without training, for timing SAEBench. ``relative_noise``: the noise scales with
    each direction's norm (bench_marginal_variant, bench_llm_cache); off, a fixed 0.01 (bench_eval_shared's
    recorded figures were measured so)."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(seed)
    d_in = hooked_model.cfg.d_model
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(
        hook_name=hook, model_name=hooked_model.cfg.model_name, context_size=context_size, prepend_bos=True)))
    tokens = torch.randint(0, hooked_model.cfg.d_vocab, (8, 32), generator=gen)
    with torch.no_grad():
        _, cache = hooked_model.run_with_cache(tokens, names_filter=[hook], stop_at_layer=int(hook.split(".")[1]) + 1)
        acts = cache[hook].reshape(-1, d_in).float()
        mean = acts.mean(0)
        directions = acts[torch.randint(0, len(acts), (d_sae,), generator=gen)] - mean
        scale = directions.norm(dim=-1, keepdim=True) if relative_noise else 1.0
        directions = directions + 0.01 * scale * torch.randn(d_sae, d_in, generator=gen)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        sae.W_dec.data = directions.clone()
        sae.W_enc.data = directions.T.clone()
        sae.b_dec.data = mean.clone()
    return sae


def model_dir_or_toy_world(model: str | None, work: Path) -> str:
    """``model`` (an HF folder) if given, else the :data:`EVAL_TOY_WORLD` model, built once under ``work``."""
    if model:
        return model
    from sae_core.toy.world import ToyWorldConfig, build_toy_world

    marker = work / "toy_world.txt"
    if not marker.exists():
        marker.write_text(str(build_toy_world(work / "toy_world", ToyWorldConfig(**EVAL_TOY_WORLD), progress=False).model_dir))
    return marker.read_text()


def metric_families(text: str) -> list[str]:
    """A comma-separated family list, checked against the registry (exits naming the unknown ones)."""
    from sae_core.metrics.registry import METRIC_NAMES

    families = [f for f in text.split(",") if f]
    unknown = sorted(set(families) - set(METRIC_NAMES))
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {sorted(METRIC_NAMES)}")
    return families


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def machine_info(threads: int | None = None) -> dict:
    import torch

    info = {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "ram_gib": round(ram_gib(), 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "loadavg": tuple(round(x, 2) for x in load_average()),
    }
    return info


def print_machine(threads: int | None = None, label: str = "machine") -> dict:
    info = machine_info(threads)
    print(f"{label}: nproc={info['nproc']} cpu={info['cpu']!r} ram={info['ram_gib']} GiB python={info['python']} "
          f"torch={info['torch']} cuda={info['cuda']} torch_threads={info['torch_threads']} "
          f"loadavg(1/5/15 min)={info['loadavg']}", flush=True)
    return info


def set_threads(n: int) -> int:
    """Set torch's intra-op threads (and the OpenMP/MKL variables subprocesses inherit)."""
    import torch

    if n > 0:
        torch.set_num_threads(n)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)
    return torch.get_num_threads()


class Timer:
    """Wall time and this process's CPU time (user+sys, all threads) of a block."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def maxrss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


class PeakRSS:
    """Peak extra resident memory of a block: the kernel's high-water mark (VmHWM) is reset to
    the current RSS on entry (``/proc/self/clear_refs`` = 5, Linux >= 4.0), read on exit;
    ``extra_mib`` = VmHWM at exit - VmRSS at entry. Counts every allocation (torch, numpy, Arrow,
    Python), not page cache of files written. NaN where unsupported."""

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.ok = True
        except OSError:
            self.ok = False
        self.rss0 = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        hwm = _status_kib("VmHWM")
        self.extra_mib = (hwm - self.rss0) / 1024 if self.ok else float("nan")
        self.peak_mib = hwm / 1024


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def emit(result: dict) -> None:
    """Worker side: print the machine-readable result line."""
    print(RESULT_TAG + json.dumps(result, default=str), flush=True)


def run_worker(cmd: list[str], env: dict | None = None, timeout: float | None = None, cwd: Path | None = None,
               echo: bool = False) -> dict:
    """Run ``cmd``; return its RESULT json (if any) plus ``_wall_s``, ``_rc`` and ``_maxrss_mib``.

    ``_maxrss_mib`` is the peak RSS of the largest child process waited for so far
    (``RUSAGE_CHILDREN`` is a running maximum, so it is only exact for the first child of a
    given size; workers report their own peak RSS too, which is what the benchmarks use).
    """
    full_env = {**os.environ, **QUIET_ENV, **(env or {})}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=full_env, cwd=str(cwd or REPO), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    result: dict = {}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if echo:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]).strip()
        raise RuntimeError(f"command failed (rc={proc.returncode}): {' '.join(cmd)}\n{tail}")
    result["_wall_s"] = wall
    result["_rc"] = proc.returncode
    result["_maxrss_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["_stderr_tail"] = proc.stderr[-2000:]
    return result


def fit_exponent(sizes, times) -> float:
    """Slope b of log(t) = a + b log(size) (least squares)."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")


def fit_affine(sizes, times) -> tuple[float, float]:
    """(a, b) of time = a + b * size (least squares): fixed cost and marginal cost per unit."""
    mx, my = sum(sizes) / len(sizes), sum(times) / len(times)
    sxx = sum((x - mx) ** 2 for x in sizes)
    b = sum((x - mx) * (y - my) for x, y in zip(sizes, times)) / sxx if sxx else float("nan")
    return my - b * mx, b


def fmt_s(x: float) -> str:
    return f"{x:8.2f}s" if x == x else "     n/a"


# --------------------------------------------------------------------------- a tiny toy experiment
# The toy preset shrunk so one cold pipeline run takes well under a minute on 2 CPU cores. The
# weights barely train (timing, not quality, is what these benchmarks measure).
TINY_OVERRIDES: dict = {
    "toy_world": {"n_documents": 1000, "train_steps": 10, "d_model": 64, "n_head": 4, "n_ctx": 64, "vocab_size": 512},
    "activations": {"n_tokens": 4096, "seq_len": 64, "batch_sequences": 16, "shard_sequences": 32},
    "calibration": {"n_samples": 8, "seq_len": 64},
    "original_sae": {"train": {"architecture": "topk", "d_sae": 256, "k": 8, "train_tokens": 4096, "lr": 0.003,
                               "batch_size": 512}},
    "retrained_sae": {"enabled": False, "train_tokens": 4096, "lr": 0.003, "batch_size": 512},
    "pruned_sae": {"rules": ["wanda"], "sparsities": [0.5], "calibration_tokens": 2048},
    "quality": {"n_tokens": 1024, "ce_sequences": 4},
    "metrics": [],
    "feature_audit": {"enabled": False},  # figures stay comparable with those measured before the audit existed
}


def flatten(overrides: dict, prefix: str = "") -> list[tuple[str, object]]:
    """{'a': {'b': 1}} -> [('a.b', 1)] (lists and non-dict values are leaves)."""
    out: list[tuple[str, object]] = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flatten(value, dotted + ".")
        else:
            out.append((dotted, value))
    return out


def cli_set_args(overrides: dict) -> list[str]:
    """``--set KEY=JSON`` arguments for ``python -m flows.full`` (JSON is valid YAML)."""
    args: list[str] = []
    for key, value in flatten(overrides):
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def remove_unless_kept(work: Path, keep: bool) -> None:
    """End of a benchmark: delete its temporary folder, or say where it was kept (``--keep``)."""
    import shutil

    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


SNAPSHOT_DIRS = ("flows", "tasks", "sae_core")


def snapshot_source(dest: Path) -> Path:
    """Copy the pipeline's packages (flows, tasks, sae_core) to ``dest`` and return it.

    Subprocesses run from the copy (cwd + PYTHONPATH), so edits made to the working tree while a
    benchmark runs (other people work in it) can neither change the code under test between a
    cold and a cached run nor invalidate cache keys (they hash task source and library files).
    """
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in SNAPSHOT_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest
