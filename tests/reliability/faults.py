"""Shared helpers of the reliability suite: S3 and file snapshots, moto authentication, pickle detection,
the instrumented flow runs of the kill / concurrency scenario (see tests/reliability/conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sae_core.storage import MANIFEST, Storage


REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "tests" / "helpers" / "instrumented_cli.py"
HOOK = "blocks.1.hook_resid_post"

# The tiny but complete flow (no metrics). Small activation shards so that "some shards done,
# others not" is a state a kill can actually land in.
TINY_FLOW_ARGS = [
    "--metrics", "",
    "--set", "toy_world.n_documents=2000", "--set", "toy_world.train_steps=60", "--set", "toy_world.d_model=64",
    "--set", "toy_world.n_ctx=64", "--set", "activations.seq_len=64", "--set", "activations.n_tokens=8000",
    "--set", "activations.shard_sequences=16",
    "--set", "original_sae.train.train_tokens=8000", "--set", "original_sae.train.d_sae=128", "--set", "original_sae.train.k=8",
    "--set", "retrained_sae.train_tokens=8000", "--set", "pruned_sae.calibration_tokens=2000",
    "--set", "retrained_sae.enabled=true", "--sae-rules", "wanda,magnitude",
    "--variants", "transfer,retrain,prune:wanda:0.5,prune:magnitude:0.5",  # the toy preset's own list is the whole ladder
    "--set", "pruned_sae.sparsities=[0.5]", "--set", "quality.n_tokens=2000", "--set", "quality.ce_sequences=4",
    "--set", "calibration.n_samples=8", "--set", "calibration.seq_len=64",
]
# transfer + retrained + 2 rules x 1 sparsity (pinned above, independent of the preset's defaults)
TINY_FLOW_VARIANTS = 4


def file_snapshot(root: Path, *, with_logs: bool = False) -> dict[str, tuple]:
    """Every path under ``root`` (folders too): kind, size, mtime and content hash. A run's own console
    log (``logs/``: a new file per run, flows/console.py) is not stored results and is left out unless asked."""
    root = Path(root)
    if not root.exists():
        return {}
    snap = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not with_logs and (rel == "logs" or rel.startswith("logs/")):
            continue
        if path.is_dir():
            snap[rel] = ("dir",)
        else:
            stat = path.stat()
            snap[rel] = ("file", stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return snap


def s3_client(endpoint: str, key: str | None = None, secret: str | None = None):
    import boto3

    kwargs = {"aws_access_key_id": key, "aws_secret_access_key": secret} if key else {}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **kwargs)


def s3_snapshot(client, buckets: list[str] | None = None) -> dict[str, tuple]:
    """bucket/key -> (ETag, size, LastModified) for every object in ``buckets`` (default: all)."""
    names = buckets if buckets is not None else [b["Name"] for b in client.list_buckets()["Buckets"]]
    snap: dict[str, tuple] = {f"{name}/": ("bucket",) for name in names}
    for name in names:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                snap[f"{name}/{obj['Key']}"] = (obj["ETag"], obj["Size"], obj["LastModified"].isoformat())
    return snap


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=30).read()


def make_iam_key(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed everything, and its access key (moto generates a random secret)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    user = f"reliability-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextlib.contextmanager
def moto_authentication(endpoint: str):
    """Make moto check signatures against its IAM users (off by default: moto accepts any key).

    The switch is process-wide in moto (it applies to every moto server in this process), so
    it is always switched back off.
    """
    _post(f"{endpoint}/moto-api/reset-auth", b"0")
    try:
        yield
    finally:
        _post(f"{endpoint}/moto-api/reset-auth", b"inf")


def clear_s3fs_instances() -> None:
    # fsspec caches one S3FileSystem per set of options; credentials read from the environment
    # are not part of that key, so a test that changes them must drop the cached instances.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


class UnpickleSpy:
    """Make every pickle-based loader record the call and raise (in this process)."""

    def __init__(self, monkeypatch):
        import pickle

        import torch.serialization

        self.calls: list[str] = []
        for owner, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.serialization, "load")):
            monkeypatch.setattr(owner, name, self._refuse(f"{owner.__name__}.{name}"))

    def _refuse(self, name):
        def refuse(*args, **kwargs):
            self.calls.append(name)
            raise RuntimeError(f"UNPICKLE ATTEMPT: {name}")

        return refuse


def stored_folder_hash(storage: Storage, prefix: str, files: list[str]) -> str:
    """sae_core.hashing.folder_hash, computed from the stored bytes."""
    digest = hashlib.sha256()
    for name in sorted(f for f in files if f != MANIFEST):
        digest.update(name.encode())
        digest.update(hashlib.sha256(storage.get_bytes(f"{prefix}/{name}")).hexdigest().encode())
    return digest.hexdigest()[:16]


def _parses_as_pickle(raw: bytes) -> bool:
    """Walk the opcodes (pickletools never builds objects) to a final STOP."""
    import pickletools

    if raw[:1] != b"\x80":
        return False
    try:
        last = None
        for opcode, _, _ in pickletools.genops(raw):
            last = opcode.name
        return last == "STOP"
    except Exception:  # noqa: BLE001 - not a pickle
        return False


def looks_like_pickle(raw: bytes) -> bool:
    """A raw pickle, a torch.save zip (data.pkl inside), a base64 pickle (Prefect's PickleSerializer),
    or a Prefect result record whose serializer is pickle."""
    if _parses_as_pickle(raw):
        return True
    if raw[:4] == b"PK\x03\x04" and b"data.pkl" in raw:
        return True
    if raw and re.fullmatch(rb"[A-Za-z0-9+/=\s]+", raw):
        with contextlib.suppress(Exception):
            if _parses_as_pickle(base64.b64decode(b"".join(raw.split()))):
                return True
    with contextlib.suppress(Exception):
        record = json.loads(raw)
        serializer = (record.get("metadata") or {}).get("serializer") or {}
        return "pickle" in str(serializer.get("type", ""))
    return False


@dataclass
class Run:
    name: str
    rc: int | None
    stdout: str
    stderr: str
    writes: list[dict]
    unpickles: list[dict]
    prefect_home: Path
    wall_s: float

    def written_keys(self) -> dict[str, set[str]]:
        keys: dict[str, set[str]] = {}
        for w in self.writes:
            if "key" in w:
                keys.setdefault(w["key"], set()).add(w["sha256"])
        return keys

    def summary(self) -> dict:
        start = self.stdout.rfind("\n{\n")
        return json.loads(self.stdout[start + 1 if start >= 0 else 0:])


@dataclass
class Scenario:
    url: str
    bucket: str
    prefix: str
    endpoint: str
    key_id: str
    secret: str
    work: Path
    runs: dict[str, Run] = field(default_factory=dict)
    snapshots: dict[str, dict] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)  # final bytes, key relative to the root

    def storage(self) -> Storage:
        return Storage(self.url)


def start_flow(scn: Scenario, name: str, kill_after: str | None = None,
                barrier: str | None = None) -> tuple[subprocess.Popen, dict]:
    home = scn.work / f"prefect-home-{name}"
    files = {k: scn.work / f"{name}.{k}" for k in ("stdout", "stderr", "writes", "unpickles")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PREFECT_HOME": str(home),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
           "AWS_ACCESS_KEY_ID": scn.key_id, "AWS_SECRET_ACCESS_KEY": scn.secret, "AWS_DEFAULT_REGION": "us-east-1",
           "SAE_TRANSFER_S3_ENDPOINT": scn.endpoint, "SAE_TRANSFER_CACHE": str(scn.work / "materialised-cache"),
           "RELIABILITY_WRITE_LOG": str(files["writes"]), "RELIABILITY_FORBID_UNPICKLE": str(files["unpickles"])}
    env.pop("RELIABILITY_KILL_AFTER", None)
    env.pop("RELIABILITY_BARRIER", None)
    if kill_after:
        env["RELIABILITY_KILL_AFTER"] = kill_after
    if barrier:
        env["RELIABILITY_BARRIER"] = barrier
    with open(files["stdout"], "w") as out, open(files["stderr"], "w") as err:
        # A session of its own: the run and the Prefect server it starts can be killed as one group.
        proc = subprocess.Popen([sys.executable, str(HELPER), "--storage", scn.url, "--json", *TINY_FLOW_ARGS], cwd=REPO, env=env,
                                stdout=out, stderr=err, start_new_session=True)
    return proc, {"files": files, "home": home, "started": time.perf_counter()}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run and anything it started (Prefect's ephemeral API server), by process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def finish(scn: Scenario, name: str, proc: subprocess.Popen, info: dict, timeout: float) -> Run:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        rc = proc.wait()
    kill_group(proc)  # an orphaned Prefect server of a killed run
    files = info["files"]

    def lines(path):  # a SIGKILL may cut the last line short
        records = []
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
        return records

    run = Run(name, rc, files["stdout"].read_text(), files["stderr"].read_text(), lines(files["writes"]),
              lines(files["unpickles"]), info["home"], round(time.perf_counter() - info["started"], 1))
    scn.runs[name] = run
    return run


def activation_state(client, scn: Scenario) -> dict[str, dict]:
    state: dict[str, dict] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=scn.bucket, Prefix=f"{scn.prefix}/activations/"):
        for obj in page.get("Contents", []):
            prefix, name = obj["Key"].rsplit("/", 1)
            entry = state.setdefault(prefix, {"sidecars": 0, "committed": False})
            entry["sidecars"] += bool(re.fullmatch(r"shard-\d+\.json", name))
            entry["committed"] |= name == MANIFEST
    return state


def storage_snapshot(client, scn: Scenario) -> dict[str, tuple]:
    root = f"{scn.bucket}/{scn.prefix}/"
    return {k[len(root):]: v for k, v in s3_snapshot(client, [scn.bucket]).items() if k.startswith(root)}


PRUNED_WEIGHTS = r"^compressed_models/[^/]+/model\.safetensors$"


def require_completed(scn: Scenario) -> None:
    for name in ("C", "D"):
        run = scn.runs[name]
        assert run.rc == 0, f"run {name} failed (rc={run.rc}):\n{run.stderr[-4000:]}"
