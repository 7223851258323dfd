"""The training curves of the SAEs a run trained: loss and dead latents against steps, one line per SAE and seed.

Every SAE trained here (the original on the dense model; ``retrain`` and ``finetune:F`` on a compressed
one) has its curve stored beside its checkpoint, ``<sae prefix>/training_curve.parquet``
(:data:`TRAINING_CURVE`; columns :data:`sae_core.sae_train.CURVE_COLUMNS`). The report draws them from
the variants table's ``sae_prefix`` column: the ``transfer`` rows point at the original SAE, the
training fixes at their own. SAEs loaded from a release or a fix that does not train have no curve and
no line.
"""

from __future__ import annotations

import io

import pandas as pd

from sae_core.storage import Storage

__all__ = ["TRAINING_CURVE", "PLOT_NAME", "training_curves", "training_curve_plot", "training_curve_plots"]

TRAINING_CURVE = "training_curve.parquet"
PLOT_NAME = "training_curves.png"


def _label(row: pd.Series, many_hooks: bool, many_models: bool) -> str:
    method = str(row.get("variant_method") or "")
    name = "original (dense)" if method == "transfer" else str(row.get("variant_spec") or row.get("sae_variant") or "")
    if many_models and method != "transfer":
        name += f" on {row.get('compression')}"
    if many_hooks:
        name = f"{row.get('hook')} {name}"
    return f"{name}, seed {int(row.get('seed') or 0)}"


def training_curves(storage: Storage, variant_rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{label: curve}`` for every distinct SAE of ``variant_rows`` that has a stored training curve."""
    if variant_rows is None or variant_rows.empty or "sae_prefix" not in variant_rows:
        return {}
    many_hooks = variant_rows["hook"].nunique() > 1 if "hook" in variant_rows else False
    many_models = variant_rows["compression"].nunique() > 1 if "compression" in variant_rows else False
    curves: dict[str, pd.DataFrame] = {}
    seen: set[str] = set()
    # The original first (its prefix is on every transfer row), then the training fixes in table order.
    order = variant_rows.assign(_first=(variant_rows.get("variant_method") != "transfer")).sort_values("_first", kind="stable")
    for _, row in order.iterrows():
        prefix = str(row["sae_prefix"])
        if prefix in seen:
            continue
        seen.add(prefix)
        key = f"{prefix}/{TRAINING_CURVE}"
        if storage.exists(key):
            curves[_label(row, many_hooks, many_models)] = storage.get_parquet(key)
    return curves


def training_curve_plot(curves: dict[str, pd.DataFrame]) -> bytes | None:
    """PNG: training loss (log scale) and dead latents against steps, one line per curve; None without curves.

    "Dead" is the curve's ``silent_latents``: latents that did not fire in the last 5% of the run's steps
    (sae-lens' own ``dead_latents`` waits ``dead_feature_window`` steps, longer than many short runs).
    """
    curves = {name: c for name, c in curves.items() if c is not None and not c.empty}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_ax, dead_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, curve in curves.items():
        loss_ax.plot(curve["step"], curve["loss"], label=name, linewidth=1.2)
        dead = curve["silent_latents"] if "silent_latents" in curve else curve["dead_latents"]
        dead_ax.plot(curve["step"], dead, label=name, linewidth=1.2)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel("training loss (sae-lens total, log scale)")
    loss_ax.set_title("loss")
    dead_ax.set_xlabel("training step")
    dead_ax.set_ylabel("latents silent in the last 5% of steps")
    dead_ax.set_title("dead latents")
    for ax in (loss_ax, dead_ax):
        ax.grid(alpha=0.3)
    dead_ax.legend(fontsize=7, loc="upper right")
    figure.suptitle("SAE training curves (per training batch, before each update)", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def training_curve_plots(storage: Storage, variant_rows: pd.DataFrame) -> dict[str, bytes]:
    """``{PLOT_NAME: png}`` for the report's plots dict, or ``{}`` when no SAE of the run was trained here."""
    png = training_curve_plot(training_curves(storage, variant_rows))
    return {PLOT_NAME: png} if png else {}
