"""The GPU check: one command, inside a short device window, every figure into one file.

Run it through ``benchmarks/gpu_check.sh`` (which first runs ``make env``, nothing else). Parts,
each in its own process with its own time limit, each recorded even when another fails:

1. ``flow``: the GPT-2 Small preset (``python -m flows.full --preset gpt2-small``) on one layer,
   every hook type (resid_post, mlp_out, attn_z), at a reduced budget: WANDA 50%, the original /
   retrained / pruned (wanda 50%) SAEs, SAEBench core on the pruned model; its metric table and
   variant rows (wall time, tokens) are copied into the output.
2. ``caching``: ``benchmarks/bench_caching.py`` on the same GPT-2 (ours vs SAELens' runner).
3. ``sae_variants``: ``benchmarks/bench_sae_variants.py`` on the preset's resid_post SAE (prune vs
   retrain, with the projection to the preset's budgets from the measured per-token rates), on the
   activations part 1 cached (random ones if part 1 failed).

Weights: ``--weights hub`` uses GPT-2 and the sae-lens releases from the Hugging Face cache (HF_HOME;
a machine with hub access downloads them on first use); ``synthetic`` builds the rehearsal's fake hub
(``tests/helpers/fakehub.py``: real shapes, random weights, toy-corpus dataset mirror) under ``--out``, so the
speed figures are real and the metric values are not; ``auto`` (default) picks ``hub`` when GPT-2
is already in the cache, else ``synthetic``. ``--hf-home DIR`` points at an existing (fake) hub.

Output: ``<out>/gpu_check.json`` (every figure, per part: status, wall seconds, command, result)
and ``<out>/gpu_check.md`` (the same as a short table). ``--budget tiny`` shrinks every part to a
CPU dry run (the test ``tests/benchmarks/test_gpu_check.py`` runs it with ``--device cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Per budget: flow sizes, benchmark sizes, and each part's time limit (seconds).
BUDGETS = {
    "gpu": {
        "flow": ["--tokens", "200000", "--set", "retrained_sae.train_tokens=200000", "--set", "retrained_sae.batch_size=4096",
                 "--set", "pruned_sae.calibration_tokens=100000", "--set", "quality.n_tokens=50000", "--set", "quality.ce_sequences=32",
                 "--set", "calibration.n_samples=128", "--set", "calibration.seq_len=1024",
                 "--set", "metric_overrides={core: {n_eval_reconstruction_batches: 20, n_eval_sparsity_variance_batches: 50}}"],
        "caching": ["--tokens", "262144", "--seq-len", "128", "--batch-sequences", "64", "--shard-sequences", "512",
                    "--repeats", "3", "--threads", "0"],
        "variants": ["--tokens", "262144", "--calib-tokens", "65536", "--batch-size", "4096", "--repeat", "3"],
        "limits": {"fakehub": 240, "flow": 420, "caching": 180, "sae_variants": 150},
    },
    "tiny": {
        "flow": ["--tokens", "1024", "--set", "retrained_sae.train_tokens=256", "--set", "retrained_sae.batch_size=256",
                 "--set", "pruned_sae.calibration_tokens=512", "--set", "quality.n_tokens=256", "--set", "quality.ce_sequences=2",
                 "--set", "calibration.n_samples=2", "--set", "calibration.seq_len=64",
                 "--set", "activations.seq_len=64", "--set", "activations.batch_sequences=8",
                 "--set", "activations.shard_sequences=16",
                 "--set", "metric_overrides={core: {n_eval_reconstruction_batches: 1, n_eval_sparsity_variance_batches: 1, "
                          "batch_size_prompts: 2, context_size: 32, compute_featurewise_weight_based_metrics: false}}"],
        "caching": ["--tokens", "512", "--seq-len", "32", "--batch-sequences", "4", "--shard-sequences", "16",
                    "--repeats", "1", "--threads", "1"],
        "variants": ["--tokens", "256", "--calib-tokens", "256", "--batch-size", "256", "--repeat", "1", "--threads", "1"],
        "limits": {"fakehub": 1200, "flow": 2400, "caching": 1500, "sae_variants": 1200},
    },
}
RESID_RELEASE = "gpt2-small-resid-post-v5-32k"


def run_part(name: str, cmd: list[str], env: dict[str, str], limit: float, log_dir: Path) -> tuple[dict, str]:
    """Run one part in its own process under ``limit`` seconds; keep its output in ``<log_dir>/<name>.log``."""
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
        status, rc, out, err = ("ok" if done.returncode == 0 else "failed"), done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        status, rc = "timed_out", None
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    wall = time.perf_counter() - started
    (log_dir / f"{name}.log").write_text(f"$ {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}")
    part = {"status": status, "wall_s": round(wall, 2), "limit_s": limit, "returncode": rc, "command": cmd}
    if status != "ok":
        part["error_tail"] = (err or out)[-2000:]
    return part, out


def result_line(stdout: str, tag: str = "RESULT ") -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag):
            return json.loads(line[len(tag):])
        if not tag and line.startswith("{"):
            return json.loads(line)
    return None


def gpt2_in_cache() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache("gpt2", "model.safetensors"), str)


def flow_figures(storage_root: Path, hooks: list[str]) -> dict:
    """The flow's metric table and variant rows, and where its resid_post training activations are."""
    import pandas as pd

    from sae_core.storage import Storage

    storage = Storage(f"file://{storage_root}")
    figures: dict = {}
    metrics = storage.read_parquet_prefix("metrics")
    figures["metrics"] = metrics[["hook", "sae_variant", "sae_scoring_rule", "sae_sparsity", "metric_family", "metric_name",
                                  "value", "status"]].to_dict(orient="records")
    variants = storage.read_parquet_prefix("variants")
    keep = [c for c in ("hook", "variant_spec", "sae_variant", "sae_scoring_rule", "sae_sparsity", "achieved_sparsity", "tokens_used",
                        "gradient_steps", "wall_time_s", "mse", "explained_variance_centred", "explained_variance", "l0", "ce_loss_score")
            if c in variants]
    figures["variants"] = variants[keep].to_dict(orient="records")
    compressed = [storage.manifest(k.rsplit("/", 1)[0]) for k in storage.list("compressed_models") if k.endswith("manifest.json")]
    figures["compression"] = [{"compression": m["compression"], "perplexity": m["perplexity"]} for m in compressed]
    best = None
    for key in storage.list("activations"):
        if key.endswith("manifest.json"):
            manifest = storage.manifest(key.rsplit("/", 1)[0])
            hook = (manifest.get("spec") or {}).get("hook_name") or manifest.get("hook_name")  # activation caches keep it in their spec
            if hook == hooks[0] and (best is None or manifest["n_tokens"] > best[1]):
                best = (key.rsplit("/", 1)[0], manifest["n_tokens"])
    figures["resid_activations"] = str(storage_root / best[0]) if best else None
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    p.add_argument("--out", default="gpu-check-out", help="output folder (gpu_check.json, gpu_check.md, logs)")
    p.add_argument("--layer", type=int, default=6, help="the one GPT-2 layer studied")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="gpu", help="gpu (default) or tiny (CPU dry run)")
    p.add_argument("--weights", choices=("auto", "hub", "synthetic"), default="auto")
    p.add_argument("--hf-home", help="an existing HF_HOME to read (e.g. a fake hub built earlier)")
    p.add_argument("--dataset-mirror", help="SAE_TRANSFER_DATASET_MIRROR for the flow (default: the fake hub's, if built)")
    p.add_argument("--parts", default="flow,caching,sae_variants", help="comma-separated subset of the parts")
    a = p.parse_args(argv)

    out = Path(a.out).resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    budget, parts = BUDGETS[a.budget], [x.strip() for x in a.parts.split(",") if x.strip()]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "PREFECT_HOME": str(out / "prefect"),
           "SAE_TRANSFER_CACHE": str(out / "cache"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if a.hf_home:
        env["HF_HOME"] = os.environ["HF_HOME"] = str(Path(a.hf_home).resolve())
    report: dict = {"device": a.device, "budget": a.budget, "layer": a.layer, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "parts": {}}
    try:
        import torch

        report["torch"] = torch.__version__
        report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        report["torch"] = f"unavailable: {exc}"

    weights = a.weights
    if weights == "auto":
        weights = "hub" if (a.hf_home or gpt2_in_cache()) else "synthetic"
    report["weights"] = weights if not a.hf_home else f"{weights} (HF_HOME={a.hf_home})"
    if weights == "synthetic" and not a.hf_home:
        root = out / "fakehub"
        code = (f"from tests.fakehub import build_fake_hub; build_fake_hub({str(root)!r}, presets=('gpt2-small',), "
                f"layers=({a.layer},))")
        report["parts"]["fakehub"], _ = run_part("fakehub", [sys.executable, "-c", code], env, budget["limits"]["fakehub"], logs)
        env.update({"HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "SAE_TRANSFER_DATASET_MIRROR": str(root / "datasets")})
        os.environ.update({k: env[k] for k in ("HF_HOME", "HF_HUB_OFFLINE")})
    if a.dataset_mirror:
        env["SAE_TRANSFER_DATASET_MIRROR"] = str(Path(a.dataset_mirror).resolve())
    report["dataset_mirror"] = env.get("SAE_TRANSFER_DATASET_MIRROR")

    hooks = [f"blocks.{a.layer}.hook_resid_post", f"blocks.{a.layer}.hook_mlp_out", f"blocks.{a.layer}.attn.hook_z"]
    activations = None
    if "flow" in parts:
        store = out / "store"
        cmd = [sys.executable, "-m", "flows.full", "--preset", "gpt2-small", "--layers", str(a.layer), "--device", a.device,
               "--sae-rules", "wanda", "--sae-sparsities", "0.5", "--metrics", "core", "--storage", f"file://{store}", *budget["flow"]]
        part, _ = run_part("flow", cmd, env, budget["limits"]["flow"], logs)
        if store.exists():
            try:
                figures = flow_figures(store, hooks)
                activations = figures.pop("resid_activations")
                part["result"] = figures
            except Exception as exc:  # noqa: BLE001 - a partial run still reports its time
                part["result_error"] = f"{type(exc).__name__}: {exc}"
        report["parts"]["flow"] = part

    if "caching" in parts:
        # The GPT-2 snapshot folder of the cache in use, as a local model folder (asked in env's HF_HOME).
        find = "from huggingface_hub import snapshot_download; print(snapshot_download('gpt2', allow_patterns=['*.json', '*.safetensors', '*.txt']))"
        found = subprocess.run([sys.executable, "-c", find], cwd=REPO, env=env, capture_output=True, text=True)
        if found.returncode != 0:
            part = {"status": "failed", "error_tail": found.stderr[-2000:]}
        else:
            cmd = [sys.executable, "benchmarks/bench_caching.py", "--model", found.stdout.strip().splitlines()[-1], "--hook", hooks[0],
                   "--device", a.device, *budget["caching"]]
            part, stdout = run_part("caching", cmd, env, budget["limits"]["caching"], logs)
            part["result"] = result_line(stdout)
        report["parts"]["caching"] = part

    if "sae_variants" in parts:
        cmd = [sys.executable, "benchmarks/bench_sae_variants.py", "--sae", f"release:{RESID_RELEASE}?id={hooks[0]}",
               "--device", a.device, "--json", "--rule", "wanda", "--sparsity", "0.5", *budget["variants"]]
        if activations:
            cmd += ["--activations", activations]
        part, stdout = run_part("sae_variants", cmd, env, budget["limits"]["sae_variants"], logs)
        part["result"] = result_line(stdout, tag="")
        part["activations"] = activations or "random (the flow left none)"
        report["parts"]["sae_variants"] = part

    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(summary_markdown(report))
    print((out / "gpu_check.md").read_text())
    return 0 if all(part.get("status") == "ok" for part in report["parts"].values()) else 1


def summary_markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['started']}, device {report['device']}, {report.get('gpu') or 'no GPU'}, "
             f"budget {report['budget']}, weights {report['weights']})", "", "| part | status | wall s | figure |", "|---|---|---|---|"]
    for name, part in report["parts"].items():
        result, figure = part.get("result") or {}, ""
        if name == "caching" and result:
            figure = (f"ours {result.get('ours_tok_s', 0):,.0f} tok/s vs SAELens {result.get('saelens_tok_s', 0):,.0f} tok/s "
                      f"= {result.get('ratio_wall', 0):.2f}x")
        elif name == "sae_variants" and result:
            figure = (f"prune {result.get('prune_s', 0):.3f} s, retrain {result.get('retrain_s', 0):.3f} s, "
                      f"projected ratio {result.get('projected', {}).get('ratio', 0):,.0f}x")
        elif name == "flow" and result:
            figure = f"{len(result.get('metrics', []))} metric rows, {len(result.get('variants', []))} variants"
        lines.append(f"| {name} | {part['status']} | {part.get('wall_s', '')} | {figure} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
