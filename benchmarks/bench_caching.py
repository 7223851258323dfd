"""Benchmark: activation caching throughput, ours (``sae_core.activations.cache_activations``)
vs SAELens' own ``CacheActivationsRunner``, same model object, same hook, same token windows.

What is compared
  * Both sides run the *same* ``HookedTransformer`` (built by ``load_language_model(path)
    .hooked()`` from the same weights) on the *same* ``--tokens`` tokens: ``tokens / seq_len``
    windows of ``seq_len`` tokens, ``--batch-sequences`` windows per forward, at ``--hook``.
  * SAELens' runner has no "model object" argument (it calls ``sae_lens.load_model`` with a
    TransformerLens model *name*, which must be an official hub model, so it cannot load a local
    toy folder offline). The benchmark therefore replaces ``sae_lens.cache_activations_runner
    .load_model`` with a function returning our already-built HookedTransformer; nothing else
    in the runner is changed. Its input is an in-memory ``datasets.Dataset`` (``override_dataset``)
    holding exactly the token windows our cache reads (``--saelens-input tokens``, the default:
    SAELens' fastest, pre-tokenized path) or the raw texts (``--saelens-input text``: SAELens
    tokenizes on the fly, like ours does).
  * Ours streams the toy corpus text, tokenizes and windows it on the fly (that cost is inside
    its time; the time to produce the windows alone is printed as "data prep"), drops special
    tokens (BOS) and writes safetensors shards; SAELens writes Arrow shards of every position
    (BOS included) and consolidates them into one HF dataset (``shuffle=False``; its
    ``buffer_size_gb`` is set so one buffer = one of our shards).
  * Throughput = tokens *forwarded* per second of wall time (both sides forward the same
    windows). Rows actually stored are printed too.
  * Each side runs in its own subprocess (same ``--threads``): one untimed warm-up forward,
    then ``--repeats`` timed runs into fresh output folders; the median is reported.
    Memory: per run, the kernel's peak-RSS mark is reset right before the run (Linux
    ``/proc/self/clear_refs``) and read after it; "peak extra RSS" = that peak - the RSS at the
    start of the run (max over runs): all resident memory the caching needed on top of the loaded
    model (torch, Arrow, Python objects), not the page cache of the files it wrote. Output
    tensors of both sides are float32 (``d_in`` x 4 bytes per row).
  * A correctness check compares the stored activations of the first shard (ours vs SAELens'
    non-special positions) in ``tokens`` mode.

Target: ours >= 1.5x SAELens tokens/s.

Example (about a minute on 2 busy CPU cores):
    .venv/bin/python benchmarks/bench_caching.py --threads 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.ensure_repo_on_path()


# --------------------------------------------------------------------------- workers (subprocesses)
def _load(model_dir: str, threads: int, device: str = "cpu"):
    import torch

    C.set_threads(threads)
    from sae_core.models import load_language_model

    with C.Timer() as t:
        lm = load_language_model(model_dir, device=device)
        hooked = lm.hooked(None)
    return torch, lm, hooked, t.wall


def worker_ours(a) -> None:
    torch, lm, hooked, load_s = _load(a.model_dir, a.threads, a.device)
    from sae_core.activations import ActivationCacheSpec, cache_activations, hook_activations
    from sae_core.datasets import iter_texts, token_windows
    from sae_core.storage import Storage

    meta = json.loads(Path(a.meta).read_text())
    spec = ActivationCacheSpec(hook_name=a.hook, dataset=a.dataset, n_tokens=meta["rows_ours"], seq_len=a.seq_len,
                               batch_sequences=a.batch_sequences, shard_sequences=a.shard_sequences)
    # Untimed warm-up: one forward, and the corpus generator's first chunk.
    warm = torch.stack(list(itertools.islice(token_windows(lm.tokenizer, iter_texts(a.dataset), a.seq_len), a.batch_sequences)))
    hook_activations(hooked, warm, a.hook)
    with C.Timer() as prep:  # data prep alone: text generation + tokenization + windowing
        n = sum(1 for _ in itertools.islice(token_windows(lm.tokenizer, iter_texts(a.dataset), a.seq_len), meta["n_seq"]))
    assert n == meta["n_seq"]
    rss0 = C.maxrss_mib()
    runs, rows = [], None
    for r in range(a.repeats):
        out = Path(a.out) / f"ours-{r}"
        storage = Storage("file://" + str(out))
        with C.PeakRSS() as mem, C.Timer() as t:
            manifest = cache_activations(hooked, lm.tokenizer, spec, storage, "acts", progress=False)
        runs.append({"wall": t.wall, "cpu": t.cpu, "extra_mib": mem.extra_mib})
        rows = manifest["n_tokens"]
        if r > 0:
            shutil.rmtree(out, ignore_errors=True)
    # The floor both sides share: the hooked forward alone over the same windows (no data prep, no I/O).
    windows = torch.stack(list(itertools.islice(token_windows(lm.tokenizer, iter_texts(a.dataset), a.seq_len), meta["n_seq"])))
    floor = []
    for _ in range(a.repeats):
        with C.Timer() as t:
            for s in range(0, len(windows), a.batch_sequences):
                hook_activations(hooked, windows[s : s + a.batch_sequences], a.hook).to("cpu")  # syncs on GPU
        floor.append({"wall": t.wall, "cpu": t.cpu})
    C.emit({"side": "ours", "runs": runs, "forward_only": floor, "rows_stored": rows, "rss_before_mib": rss0, "rss_peak_mib": C.maxrss_mib(),
            "load_s": load_s, "prep_wall_s": prep.wall, "prep_cpu_s": prep.cpu, "threads": torch.get_num_threads()})


def worker_saelens(a) -> None:
    torch, lm, hooked, load_s = _load(a.model_dir, a.threads, a.device)
    import datasets
    import sae_lens.cache_activations_runner as runner_mod
    from sae_lens.config import CacheActivationsRunnerConfig

    from sae_core.activations import hook_activations

    datasets.disable_progress_bars()
    _no_torchvision_in_datasets()
    meta = json.loads(Path(a.meta).read_text())
    runner_mod.load_model = lambda **kwargs: hooked  # the runner's only model source; see module docstring
    dataset = datasets.load_from_disk(str(Path(a.out) / f"saelens-input-{a.saelens_input}"))
    d_in = meta["d_in"]
    shard_tokens = a.shard_sequences * a.seq_len
    bytes_per_token = d_in * 4

    def config(out: Path) -> CacheActivationsRunnerConfig:
        cfg = CacheActivationsRunnerConfig(
            dataset_path=str(Path(a.out) / f"saelens-input-{a.saelens_input}"), model_name=a.model_dir,
            model_batch_size=a.batch_sequences, hook_name=a.hook, d_in=d_in, training_tokens=meta["n_seq"] * a.seq_len,
            context_size=a.seq_len, new_cached_activations_path=str(out), shuffle=False, dtype="float32",
            device=a.device, buffer_size_gb=(shard_tokens * bytes_per_token + 0.5) / 1e9, prepend_bos=True,
        )
        assert cfg.n_tokens_in_buffer == shard_tokens, (cfg.n_tokens_in_buffer, shard_tokens)
        return cfg

    warm = torch.as_tensor(meta["first_window"]).unsqueeze(0).repeat(a.batch_sequences, 1)
    hook_activations(hooked, warm, a.hook)
    rss0 = C.maxrss_mib()
    runs = []
    rows = None
    for r in range(a.repeats):
        out = Path(a.out) / f"saelens-{r}"
        with C.Timer() as t_init:
            runner = runner_mod.CacheActivationsRunner(config(out), override_dataset=dataset)
        with C.PeakRSS() as mem, C.Timer() as t:
            result = runner.run()
        rows = len(result) * a.seq_len
        runs.append({"wall": t.wall, "cpu": t.cpu, "init_wall": t_init.wall, "extra_mib": mem.extra_mib})
        del runner, result
        if r > 0:
            shutil.rmtree(out, ignore_errors=True)
    C.emit({"side": "saelens", "runs": runs, "rows_stored": rows, "rss_before_mib": rss0, "rss_peak_mib": C.maxrss_mib(),
            "load_s": load_s, "threads": torch.get_num_threads(), "sae_lens": _version("sae-lens")})


def _no_torchvision_in_datasets() -> None:
    """datasets 3.6's torch formatter imports ``torchvision.io.VideoReader`` whenever torchvision
    is imported (transformers imports it); torchvision 0.29 no longer has it, so every torch-formatted
    row read fails with ImportError. SAELens' pre-tokenized path uses ``set_format("torch")``, so the
    benchmark tells datasets torchvision is absent (it only needs it for video columns)."""
    import datasets.config

    datasets.config.TORCHVISION_AVAILABLE = False


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:  # noqa: BLE001
        return "?"


# --------------------------------------------------------------------------- parent
def prepare(a, work: Path) -> dict:
    """Model (toy world unless --model), the token windows, and SAELens' input dataset."""
    import torch

    from sae_core.activations import special_token_ids
    from sae_core.datasets import iter_texts, token_windows

    if a.model:
        model_dir = str(Path(a.model).expanduser().resolve())
        build_s = 0.0
    else:
        from sae_core.toy.world import ToyWorldConfig, build_toy_world

        with C.Timer() as t:
            world = build_toy_world(work / "world", ToyWorldConfig(n_documents=a.toy_documents, train_steps=a.toy_steps,
                                                                     d_model=a.toy_d_model, n_layer=2, n_head=4,
                                                                     n_ctx=max(128, a.seq_len)), progress=False)
        model_dir, build_s = str(world.model_dir), t.wall
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    hf_cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    n_seq = a.tokens // a.seq_len
    if n_seq % a.shard_sequences:
        raise SystemExit(f"--tokens/--seq-len = {n_seq} windows must be a multiple of --shard-sequences {a.shard_sequences}")
    windows = torch.stack(list(itertools.islice(token_windows(tokenizer, iter_texts(a.dataset), a.seq_len), n_seq)))
    specials = torch.tensor(sorted(special_token_ids(tokenizer)))
    rows_ours = int((~torch.isin(windows, specials)).sum())
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"input_ids": windows.tolist()}).save_to_disk(str(work / "saelens-input-tokens"))
    if a.saelens_input == "text":  # enough raw documents for n_seq windows (+10%)
        texts, n_tok = [], 0
        for text in iter_texts(a.dataset):
            texts.append(text)
            n_tok += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
            if n_tok >= 1.1 * n_seq * a.seq_len:
                break
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(work / "saelens-input-text"))
    d_model = getattr(hf_cfg, "n_embd", None) or hf_cfg.hidden_size
    meta = {"n_seq": n_seq, "rows_ours": rows_ours, "d_in": int(d_model), "model_dir": model_dir,
            "first_window": windows[0].tolist(), "build_s": build_s}
    if a.hook.endswith("attn.hook_z") or not a.hook.endswith(("resid_post", "resid_pre", "resid_mid", "mlp_out", "attn_out")):
        raise SystemExit(f"this benchmark supports d_model-wide hooks (resid_*, mlp_out, attn_out), got {a.hook!r}")
    (work / "meta.json").write_text(json.dumps(meta))
    return meta


def check_equal(work: Path, hook: str, tokenizer_specials: list[int], seq_len: int) -> str:
    """Ours' shard 0 vs SAELens' first windows, non-special positions only."""
    import datasets
    import torch
    from safetensors.torch import load_file

    _no_torchvision_in_datasets()
    ours = load_file(str(work / "ours-0" / "acts" / "shard-00000.safetensors"))
    ds = datasets.load_from_disk(str(work / "saelens-0")).with_format("torch")
    n = min(64, len(ds))
    theirs = ds[:n][hook].reshape(-1, ds[0][hook].shape[-1])
    ids = ds[:n]["token_ids"].reshape(-1).long()
    keep = ~torch.isin(ids, torch.tensor(tokenizer_specials))
    theirs, ids = theirs[keep], ids[keep]
    m = min(theirs.shape[0], ours["activations"].shape[0])
    theirs, ids = theirs[:m], ids[:m]
    same_ids = torch.equal(ours["token_ids"][:m].long(), ids)
    diff = (ours["activations"][:m] - theirs).abs().max().item()
    return f"token ids identical={same_ids}, max |ours - SAELens| = {diff:.3g} over {m} rows"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local HF model folder (default: a small toy world built in a temp dir)")
    p.add_argument("--hook", default="blocks.1.hook_resid_post")
    p.add_argument("--dataset", default="toy-corpus:1", help="our dataset name (the source of the token windows)")
    p.add_argument("--tokens", type=int, default=32768, help="tokens forwarded per run (multiple of seq_len*shard_sequences)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-sequences", type=int, default=16)
    p.add_argument("--shard-sequences", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each worker (0: torch default)")
    p.add_argument("--saelens-input", choices=("tokens", "text"), default="tokens")
    p.add_argument("--device", default="cpu", help="model device for both sides (cpu, cuda); activations are stored on CPU")
    p.add_argument("--toy-documents", type=int, default=2000)
    p.add_argument("--toy-steps", type=int, default=20, help="training steps of the toy LM (weights barely matter here)")
    p.add_argument("--toy-d-model", type=int, default=128)
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    p.add_argument("--worker", choices=("ours", "saelens"), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--meta", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker == "ours":
        return worker_ours(a)
    if a.worker == "saelens":
        return worker_saelens(a)

    threads = C.set_threads(a.threads)
    machine = C.print_machine(threads)
    work = Path(tempfile.mkdtemp(prefix="bench-caching-"))
    try:
        t0 = time.perf_counter()
        meta = prepare(a, work)
        print(f"model: {meta['model_dir'] if a.model else 'toy world (built in %.1f s)' % meta['build_s']}  hook={a.hook} "
              f"d_in={meta['d_in']}  {meta['n_seq']} windows x {a.seq_len} = {meta['n_seq'] * a.seq_len} tokens forwarded, "
              f"batch {a.batch_sequences}, shard {a.shard_sequences} windows; SAELens input: {a.saelens_input}", flush=True)
        common = [sys.executable, __file__, "--model-dir", meta["model_dir"], "--meta", str(work / "meta.json"), "--out", str(work),
                  "--hook", a.hook, "--dataset", a.dataset, "--seq-len", str(a.seq_len), "--batch-sequences", str(a.batch_sequences),
                  "--shard-sequences", str(a.shard_sequences), "--repeats", str(a.repeats), "--threads", str(a.threads),
                  "--saelens-input", a.saelens_input, "--device", a.device]
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        res = {}
        for side in ("ours", "saelens"):
            res[side] = C.run_worker(common + ["--worker", side], env=env)
            print(f"  {side} worker done (process wall {res[side]['_wall_s']:.1f} s, load avg now {C.load_average()[0]:.2f})", flush=True)
        tokens = meta["n_seq"] * a.seq_len
        ours, theirs = res["ours"], res["saelens"]
        w_o, w_s = C.median(r["wall"] for r in ours["runs"]), C.median(r["wall"] for r in theirs["runs"])
        c_o, c_s = C.median(r["cpu"] for r in ours["runs"]), C.median(r["cpu"] for r in theirs["runs"])
        print(f"\nmedian of {a.repeats} run(s), threads={ours['threads']} (ours) / {theirs['threads']} (SAELens)")
        print(f"{'':34s} {'wall s':>8s} {'cpu s':>8s} {'tok/s (wall)':>13s} {'rows stored':>12s} {'peak extra RSS':>15s}")
        for name, r, w, c in (("ours (cache_activations)", ours, w_o, c_o), (f"SAELens {theirs['sae_lens']} runner", theirs, w_s, c_s)):
            print(f"{name:34s} {w:8.3f} {c:8.3f} {tokens / w:13,.0f} {r['rows_stored']:12,d} "
                  f"{max(x['extra_mib'] for x in r['runs']):11.1f} MiB")
        print(f"  per-run walls: ours {[round(r['wall'], 2) for r in ours['runs']]}, SAELens {[round(r['wall'], 2) for r in theirs['runs']]}")
        fwd = C.median(r["wall"] for r in ours["forward_only"])
        print(f"  forward alone (hook_activations = run_with_cache(stop_at_layer), same windows/batches): {fwd:.3f} s wall "
              f"= {100 * fwd / w_o:.0f}% of ours, {100 * fwd / w_s:.0f}% of SAELens; "
              f"best ratio reachable with this forward: {w_s / fwd:.2f}x")
        print(f"  SAELens runner construction (not timed above): median {C.median(r['init_wall'] for r in theirs['runs']):.3f} s")
        print(f"  ours: data prep alone (corpus text + tokenize + window, inside ours' time): {ours['prep_wall_s']:.3f} s wall")
        print(f"  worker lifetime peak RSS (ru_maxrss, dominated by imports + model load): ours {ours['rss_peak_mib']:.0f} MiB, "
              f"SAELens {theirs['rss_peak_mib']:.0f} MiB")
        shard_mib = a.shard_sequences * a.seq_len * meta["d_in"] * 4 / 2**20
        print(f"  (one shard / SAELens buffer of activations = {shard_mib:.1f} MiB float32)")
        if a.saelens_input == "tokens":
            from transformers import AutoTokenizer

            from sae_core.activations import special_token_ids

            tok = AutoTokenizer.from_pretrained(meta["model_dir"], local_files_only=True)
            print(f"  check: {check_equal(work, a.hook, sorted(special_token_ids(tok)), a.seq_len)}")
        ratio_wall, ratio_cpu = w_s / w_o, c_s / c_o
        print(f"\nratio ours / SAELens tokens/s: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x cpu  (target >= 1.5x: "
              f"{'PASS' if ratio_wall >= 1.5 else 'FAIL'})")
        print(f"total benchmark time {time.perf_counter() - t0:.1f} s; load avg at end {C.load_average()}")
        C.emit({"tokens": tokens, "ours_tok_s": tokens / w_o, "saelens_tok_s": tokens / w_s, "ratio_wall": ratio_wall,
                "ratio_cpu": ratio_cpu, "machine": machine})
    finally:
        C.remove_unless_kept(work, a.keep)


if __name__ == "__main__":
    main()
