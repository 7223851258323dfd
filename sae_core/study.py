"""One experiment per name on a storage root, and how far a (long, resumable) run of it got.

Every task of the flow is content-cached in storage, so an interrupted run resumes by running the same
command again: finished steps are read back, not recomputed. Two things are added here:

**The experiment record** ``experiments/<name>/experiment.json``. The first run of an experiment name on a
root writes what defines the experiment (:func:`identity`: model, text, toy world, hook types, every setting
of the activations, the SAEs and their training, calibration, repair, quality, feature audit, metric profile
and overrides, dtype) and its hash. A later run under the same name whose identity differs is refused before
any work (:func:`check_experiment`), naming each differing field with both values; nothing stored is touched.
Left out of the identity, because a study legitimately grows them and every stored result stays valid when
they do: ``layers``, ``compression``, ``variants``, ``seeds`` / ``seed``, ``metrics``, ``pruned_sae.rules`` and
``pruned_sae.sparsities`` (they derive variants), ``retrained_sae.enabled``, ``feature_audit.enabled`` and
``feature_audit.match`` and what the audit covers (``feature_audit.compressions``, ``.layers``, ``.seeds``),
``layer_seeds``, and ``device`` (where a step runs, not what it computes). ``feature_audit.perplexity_tokens``
defines the audit's perplexity, so it is part of the identity once set; left out while None (every audit
token, as before the knob existed), so records written before it still match. The check is per experiment
name, not per root: one root holds several presets (``./artifacts`` is every preset's default), and each
report, metric row and generated doc is selected by experiment name. ``allow_mixed=True``
(``--allow-mixed-storage``) runs anyway and leaves the first record as it is.

**The step ledger** ``experiments/<name>/steps/<hash>.json``: an empty marker per finished step (compress,
original SAE, SAE variant, feature identity, metric, feature audit), keyed by the experiment's identity hash
and the step's name in the plan (:func:`planned_steps`), written when the step completes. At start,
:func:`progress` counts the markers of this config's plan: "N of M steps done". A marker says the step
finished once; a code change since then makes the task recompute (its cache key holds the code's
fingerprint), so N is what earlier runs finished, not a promise that nothing reruns.

Plain library: no prefect (the flow hands futures to :class:`StepLedger`).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sae_core.hashing import config_hash

EXPERIMENTS = "experiments"
# Top-level config fields a study may grow (or that say where, not what): not part of the identity.
GROWABLE = ("name", "layers", "compression", "variants", "seeds", "seed", "layer_seeds", "metrics", "device", "llm_pruning")
# Nested fields left out for the same reason ("section.field").
GROWABLE_NESTED = ("pruned_sae.rules", "pruned_sae.sparsities", "retrained_sae.enabled", "feature_audit.enabled",
                   "feature_audit.match", "feature_audit.compressions", "feature_audit.layers", "feature_audit.seeds")
# Nested fields added after records were first written whose None means the behaviour from before: left out while
# None, so that those records still match.
OMITTED_WHEN_NONE = ("feature_audit.perplexity_tokens",)

_log = logging.getLogger(__name__)


def record_key(name: str) -> str:
    return f"{EXPERIMENTS}/{name}/experiment.json"


def identity(config) -> dict[str, Any]:
    """What defines the experiment (JSON): the config without the growable fields (module docstring)."""
    data = config.model_dump(mode="json")
    for key in GROWABLE:
        data.pop(key, None)
    for dotted in (*GROWABLE_NESTED, *OMITTED_WHEN_NONE):
        section, field = dotted.split(".")
        if isinstance(data.get(section), dict) and (dotted in GROWABLE_NESTED or data[section].get(field) is None):
            data[section] = {k: v for k, v in data[section].items() if k != field}
    return data


def identity_hash(config) -> str:
    return config_hash(identity(config))


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """``field: old -> new`` for every leaf that differs between two identities (dotted paths)."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            lines += differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{path}.{key}" if path else str(key))
        return lines
    return [] if old == new else [f"{path or '(whole config)'}: {old!r:.120} (stored) -> {new!r:.120} (this run)"]


class MixedStorageError(ValueError):
    """A run whose experiment identity differs from the one recorded under its name on this root."""


_WARNED_MIXED: set[tuple[str, str]] = set()  # (record URI, configuration hash) already warned about in this process


def check_experiment(storage, config, allow_mixed: bool = False, command: str | None = None) -> dict[str, Any]:
    """Refuse a run whose experiment differs from the one recorded under its name on this root (or record it).

    Returns the record in storage. Raises :class:`MixedStorageError` naming every differing field unless
    ``allow_mixed``. Reads one small object and writes it only when absent: cheap, before any work."""
    key, mine = record_key(config.name), identity(config)
    if storage.exists(key):
        record = storage.get_json(key)
        stored = record.get("identity", {})
        if record.get("identity_hash") != config_hash(mine):
            changed = differences(stored, mine) or ["(same fields, different hash: written by another version?)"]
            if not allow_mixed:
                raise MixedStorageError(
                    f"storage {storage.uri(key)} holds experiment {config.name!r} with another configuration; "
                    f"refusing to mix their results ({len(changed)} field(s) differ):\n  " + "\n  ".join(changed)
                    + "\nUse a fresh storage root, another experiment name (--set name=NEW), or pass --allow-mixed-storage "
                      "to run anyway (nothing stored is changed or removed).")
            once = (storage.uri(key), config_hash(mine))
            if once not in _WARNED_MIXED:  # the CLI checks before Prefect starts and the flow again: say it once
                _WARNED_MIXED.add(once)
                _log.warning("experiment %r: mixing configurations on one root (--allow-mixed-storage): %s", config.name, "; ".join(changed))
        return record
    record = {"name": config.name, "model": config.model, "dataset": config.dataset, "identity_hash": config_hash(mine),
              "identity": mine, "created": dt.datetime.now(dt.timezone.utc).isoformat(), "command": command,
              "excluded_from_identity": [*GROWABLE, *GROWABLE_NESTED]}
    storage.put_json(key, record)
    return record


# ------------------------------------------------------------------ the plan and the ledger
def planned_steps(config) -> list[str]:
    """The steps of ``config``'s run, named by what they are (the flow's loops, without the cheap ones:
    base model, activation caches, controls, report): per hook the seeds its layer runs (``layer_seeds``),
    the audit's own selection (``feature_audit.compressions`` / ``layers`` / ``seeds``), audit-only
    compressions included. Matched-perplexity audits are not counted."""
    hooks = config.hook_names()
    trained = config.original_sae.train is not None
    steps = [f"original|{h}|{s}" for h in hooks for s in (config.hook_seeds(h) if trained else config.hook_seeds(h)[:1])]
    measure_identity = config.repair.identity or config.feature_audit.enabled
    for spec in config.compression:
        steps.append(f"compress|{spec.text}")
        for h in hooks:
            for s in config.hook_seeds(h):
                for v in config.variants:
                    steps.append(variant_step(h, spec.text, v.text, s))
                    if measure_identity:
                        steps.append(f"identity|{h}|{spec.text}|{v.text}|{s}")
                    steps += [metric_step(m, h, spec.text, v.text, s) for m in config.metrics]
    if config.feature_audit.enabled:
        steps += [f"compress|{spec.text}" for spec in config.audit_only_compressions()]
        steps += [audit_step(h, spec.text, s) for spec in config.audit_compressions() for h in config.audit_hooks()
                  for s in config.audit_seeds(h)]
    return steps


def audit_step(hook: str, compression: str, seed: int) -> str:
    return f"audit|{hook}|{compression}|{seed}"


def variant_step(hook: str, compression: str, variant: str, seed: int) -> str:
    return f"variant|{hook}|{compression}|{variant}|{seed}"


def metric_step(metric: str, hook: str, compression: str, variant: str, seed: int) -> str:
    return f"metric|{metric}|{hook}|{compression}|{variant}|{seed}"


def _ledger_prefix(config) -> str:
    return f"{EXPERIMENTS}/{config.name}/steps"


def _marker(config, step: str, ident: str | None = None) -> str:
    return f"{_ledger_prefix(config)}/{config_hash(ident or identity_hash(config), step)}.json"


def progress(storage, config) -> tuple[int, int]:
    """(steps of ``config``'s plan an earlier run finished, steps in the plan): one listing of the ledger."""
    plan = planned_steps(config)
    ident = identity_hash(config)
    done = set(storage.list(_ledger_prefix(config)))
    return sum(_marker(config, step, ident) in done for step in plan), len(plan)


def progress_line(storage, config) -> str:
    done, total = progress(storage, config)
    state = "nothing to do but the report" if done == total else "resuming" if done else "starting"
    return f"experiment {config.name!r}: {done} of {total} steps done in {storage.uri(EXPERIMENTS + '/' + config.name)} ({state})"


class StepLedger:
    """Writes a step's marker when its future completes (the future's done callback, in the thread that ran
    it). Markers already there are not rewritten; a marker that cannot be written only logs."""

    def __init__(self, storage, config):
        self.storage, self.config, self._ident = storage, config, identity_hash(config)

    def track(self, future, step: str):
        """``future``, unchanged, with its step's marker to be written when it completes."""
        try:
            future.add_done_callback(lambda f, step=step: self._done(f, step))
        except (AttributeError, NotImplementedError) as err:  # a runner whose futures take no callbacks: no marker
            _log.debug("step %s is not tracked: %s", step, err)
        return future

    def _done(self, future, step: str) -> None:
        try:
            future.wait()  # done already: this only fixes its final state without asking the API
            if future.state.is_completed():
                key = _marker(self.config, step, self._ident)
                if not self.storage.exists(key):
                    self.storage.put_json(key, {"step": step})
        except Exception as err:  # noqa: BLE001 - the ledger is a progress report, never a reason to fail a run
            _log.warning("could not record step %s as done: %s", step, err)
