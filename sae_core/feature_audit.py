"""Feature-level audit: what compressing the LLM does to each feature of a frozen SAE.

The dense and the compressed model read the *same* token windows; one frozen SAE (trained on the
dense model) encodes both activation sets, and each feature ``j`` is compared over every kept
token position, zeros included (Duan, arXiv 2606.03002; docs/results-compression.md):

- ``r_j``: Pearson correlation of ``f_dense[:, j]`` and ``f_compressed[:, j]``, streamed in
  float64 (``num = Σxy − ΣxΣy/n``, ``den = sqrt(max(var_x·var_y, 1e-12))``, clamped to [−1, 1]);
  a feature that is constant on either side gets ``r = 0`` (it carries no signal there);
- firing rate on each side (``act > 0``), firing-set Jaccard ``|{x>0}∩{y>0}| / |{x>0}∪{y>0}|``
  (did the feature move to other tokens?) and the magnitude ratio ``Σy / Σx`` over co-firing
  tokens (was it only rescaled?); dense mean and max activation (the survival predictors).

Classes, over *active* features only (dense firing rate > ``FIRING_THRESHOLD``): survived
``r > SURVIVAL_THRESHOLD``, degraded ``DAMAGE_THRESHOLD ≤ r ≤ SURVIVAL_THRESHOLD``, damaged
``r < DAMAGE_THRESHOLD``; plus ``dead_after`` (active dense, never fires compressed).

Noise floor: the windows are dealt into ``n_subsets`` disjoint subsets (window ``i`` goes to
subset ``i mod n_subsets``) and the spread of survived % across them is reported beside every
figure. Each subset holds 1/n of the tokens, so that spread is an upper bound on the noise of the
full-token figure (≈ √n larger).

Feature cards (``sae_core.feature_cards``): with ``card_top_k > 0`` the same pass also records,
per feature, its ``card_top_k`` highest dense activations (value, window, position, and the
compressed model's activation at that very position) and histograms of its non-zero activations
on both sides over fixed, shared log-spaced bins (``CardRecorder``); nothing else changes.

Plain library: no prefect. Models are TransformerLens ``HookedTransformer`` objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import pandas as pd

from sae_core.lazy_torch import no_grad

if TYPE_CHECKING:  # torch loads when an audit runs, not when the report reads the thresholds
    import torch

# Duan's thresholds (src/qdm_feature_survival/metrics.py), kept so figures are comparable.
FIRING_THRESHOLD = 1e-3  # a feature is "active" if it fires on > 0.1% of dense tokens (a rate, not a count)
SURVIVAL_THRESHOLD = 0.9  # survived: r > 0.9
DAMAGE_THRESHOLD = 0.5  # damaged: r < 0.5; degraded ("blurred"): 0.5 <= r <= 0.9
DENOMINATOR_FLOOR = 1e-12  # on var_x * var_y, as in Duan's RunningFeatureStats
LOG_CLIP = 1e-8  # firing rate, mean and max are clipped here before a log (Duan, phase 5)
CV_FOLDS = 5
# Rows of one encode step: bounds the float64 temporaries to ~32 MB whatever the SAE width.
_CHUNK_ELEMENTS = 1 << 22

CLASSES = ("survived", "degraded", "damaged")
TABLE_COLUMNS = ["feature", "r", "dense_firing_rate", "compressed_firing_rate", "firing_jaccard", "magnitude_ratio",
                 "dense_mean", "dense_max", "active", "fidelity_class", "dead_after"]


# ------------------------------------------------------------------ streaming per-feature sums
@dataclass
class FeatureMoments:
    """Running float64 sums over tokens for every feature of one (dense, compressed) pairing."""

    d_sae: int
    n: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    _SUMS = ("x", "y", "xx", "yy", "xy", "fire_x", "fire_y", "fire_both", "co_x", "co_y")

    def __post_init__(self):
        import torch

        if not self.sums:
            self.sums = {name: torch.zeros(self.d_sae, dtype=torch.float64) for name in self._SUMS}
            self.sums.update(max_x=torch.full((self.d_sae,), -math.inf, dtype=torch.float64),
                             min_x=torch.full((self.d_sae,), math.inf, dtype=torch.float64),
                             max_y=torch.full((self.d_sae,), -math.inf, dtype=torch.float64),
                             min_y=torch.full((self.d_sae,), math.inf, dtype=torch.float64))

    @no_grad
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add token rows ``x`` (dense) and ``y`` (compressed), both ``[tokens, d_sae]``."""
        import torch

        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != self.d_sae:
            raise ValueError(f"feature batches must both be [tokens, {self.d_sae}], got {tuple(x.shape)} and {tuple(y.shape)}")
        step = max(1, _CHUNK_ELEMENTS // self.d_sae)
        for start in range(0, x.shape[0], step):
            xd, yd = x[start:start + step].double(), y[start:start + step].double()
            fx, fy = xd > 0, yd > 0
            both = fx & fy
            s = self.sums
            for name, value in (("x", xd.sum(0)), ("y", yd.sum(0)), ("xx", (xd * xd).sum(0)), ("yy", (yd * yd).sum(0)),
                                ("xy", (xd * yd).sum(0)), ("fire_x", fx.sum(0)), ("fire_y", fy.sum(0)),
                                ("fire_both", both.sum(0)), ("co_x", (xd * both).sum(0)), ("co_y", (yd * both).sum(0))):
                s[name] += value.to("cpu", torch.float64)
            s["max_x"] = torch.maximum(s["max_x"], xd.amax(0).cpu())
            s["min_x"] = torch.minimum(s["min_x"], xd.amin(0).cpu())
            s["max_y"] = torch.maximum(s["max_y"], yd.amax(0).cpu())
            s["min_y"] = torch.minimum(s["min_y"], yd.amin(0).cpu())
            self.n += int(xd.shape[0])

    def merged(self, other: "FeatureMoments") -> "FeatureMoments":
        import torch

        if other.d_sae != self.d_sae:
            raise ValueError(f"cannot merge moments of {self.d_sae} and {other.d_sae} features")
        sums = {k: self.sums[k] + other.sums[k] for k in self._SUMS}
        for k, pick in (("max_x", torch.maximum), ("min_x", torch.minimum), ("max_y", torch.maximum), ("min_y", torch.minimum)):
            sums[k] = pick(self.sums[k], other.sums[k])
        return FeatureMoments(self.d_sae, self.n + other.n, sums)

    def table(self) -> pd.DataFrame:
        """One row per feature: r, firing rates, firing Jaccard, magnitude ratio, dense mean/max, class."""
        if self.n == 0:
            raise ValueError("no tokens were accumulated: every position was excluded or no windows were given")
        s = {k: v.numpy() for k, v in self.sums.items()}
        n = float(self.n)
        num = s["xy"] - s["x"] * s["y"] / n
        var_x = s["xx"] - s["x"] ** 2 / n
        var_y = s["yy"] - s["y"] ** 2 / n
        r = np.clip(num / np.sqrt(np.maximum(var_x * var_y, DENOMINATOR_FLOOR)), -1.0, 1.0)
        # Exactly constant on either side (e.g. never fires): no signal to correlate, r = 0.
        r = np.where((s["max_x"] == s["min_x"]) | (s["max_y"] == s["min_y"]), 0.0, r)
        union = s["fire_x"] + s["fire_y"] - s["fire_both"]
        with np.errstate(divide="ignore", invalid="ignore"):
            jaccard = np.where(union > 0, s["fire_both"] / np.maximum(union, 1), np.nan)
            ratio = np.where(s["co_x"] > 0, s["co_y"] / s["co_x"], np.nan)
        dense_rate, compressed_rate = s["fire_x"] / n, s["fire_y"] / n
        active = dense_rate > FIRING_THRESHOLD
        frame = pd.DataFrame({
            "feature": np.arange(self.d_sae), "r": r, "dense_firing_rate": dense_rate, "compressed_firing_rate": compressed_rate,
            "firing_jaccard": jaccard, "magnitude_ratio": ratio, "dense_mean": s["x"] / n, "dense_max": s["max_x"],
            "active": active, "fidelity_class": classify(r, active), "dead_after": active & (s["fire_y"] == 0),
        })
        frame.attrs["n_tokens"] = self.n
        return frame[TABLE_COLUMNS]

# ------------------------------------------------------------------ what the feature cards need, in the same pass
CARD_TOP_K = 10  # positions kept per feature (the cards show the first few)
HIST_LOG10_RANGE = (-3.0, 3.0)  # non-zero activations in [1e-3, 1e3) get log-spaced bins; below / above: one bin each
HIST_BINS_PER_DECADE = 12


def histogram_edges() -> np.ndarray:
    """The fixed bin edges every histogram shares: ``[0, 1e-3, ..., 1e3, inf]`` (log-spaced inside)."""
    lo, hi = HIST_LOG10_RANGE
    inner = np.logspace(lo, hi, int(round((hi - lo) * HIST_BINS_PER_DECADE)) + 1)
    return np.concatenate([[0.0], inner, [np.inf]])


@dataclass
class CardRecorder:
    """Per feature: the ``k`` largest dense activations seen so far, where they were (window, position)
    and the compressed model's activation at those positions, plus histograms of the non-zero
    activations on each side over ``histogram_edges()``. Memory: ``d_sae * (4k + 2 * bins)`` numbers
    (16384 features, k = 10, 74 bins: ~23 MB), whatever the number of tokens."""

    d_sae: int
    k: int = CARD_TOP_K
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        import torch

        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        n_bins = len(histogram_edges()) - 1
        if not self.state:
            self.state = {"value": torch.full((self.k, self.d_sae), -math.inf), "compressed": torch.full((self.k, self.d_sae), math.nan),
                          "window": torch.full((self.k, self.d_sae), -1, dtype=torch.long),
                          "position": torch.full((self.k, self.d_sae), -1, dtype=torch.long),
                          "hist_dense": torch.zeros((self.d_sae, n_bins), dtype=torch.long),
                          "hist_compressed": torch.zeros((self.d_sae, n_bins), dtype=torch.long)}

    @no_grad
    def update(self, x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, position: torch.Tensor) -> None:
        """Add token rows ``x`` (dense) and ``y`` (compressed), ``[tokens, d_sae]``, read at ``window[i], position[i]``."""
        import torch

        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != self.d_sae or len(window) != len(x) or len(position) != len(x):
            raise ValueError(f"card rows must be [tokens, {self.d_sae}] on both sides with one window / position each, got "
                             f"{tuple(x.shape)}, {tuple(y.shape)}, {len(window)}, {len(position)}")
        window, position = torch.as_tensor(window, dtype=torch.long).cpu(), torch.as_tensor(position, dtype=torch.long).cpu()
        edges = torch.as_tensor(histogram_edges()[1:-1], dtype=torch.float64, device=x.device)
        s = self.state
        step = max(1, _CHUNK_ELEMENTS // self.d_sae)
        for start in range(0, x.shape[0], step):  # selection and counting on x's device; only [k, d_sae] and counts move
            xd, yd = x[start:start + step].float(), y[start:start + step].float()
            value, row = xd.topk(min(self.k, len(xd)), dim=0)  # [k', d_sae]
            row_cpu = row.cpu()
            candidates = {"value": torch.cat([s["value"], value.cpu()]), "compressed": torch.cat([s["compressed"], yd.gather(0, row).cpu()]),
                          "window": torch.cat([s["window"], window[start:start + step][row_cpu]]),
                          "position": torch.cat([s["position"], position[start:start + step][row_cpu]])}
            keep = candidates["value"].topk(self.k, dim=0).indices
            for name, stacked in candidates.items():
                s[name] = stacked.gather(0, keep)
            for side, acts in (("hist_dense", xd), ("hist_compressed", yd)):
                fired = acts > 0
                feature = fired.nonzero()[:, 1]
                bins = torch.bucketize(acts[fired].double(), edges, right=True)  # 0: (0, 1e-3); last: >= 1e3
                n_bins = s[side].shape[1]
                s[side] += torch.bincount(feature * n_bins + bins, minlength=s[side].numel()).view_as(s[side]).cpu()

    def topk_table(self) -> pd.DataFrame:
        """One row per (feature, rank) with a positive dense activation: ``feature, rank, dense_value,
        compressed_value, window, position``; rank 0 is the feature's largest dense activation."""
        s = {name: v.numpy() for name, v in self.state.items() if not name.startswith("hist")}
        rank, feature = np.meshgrid(np.arange(self.k), np.arange(self.d_sae), indexing="ij")
        frame = pd.DataFrame({"feature": feature.ravel(), "rank": rank.ravel(), "dense_value": s["value"].ravel().astype(np.float64),
                              "compressed_value": s["compressed"].ravel().astype(np.float64),
                              "window": s["window"].ravel(), "position": s["position"].ravel()})
        frame = frame[frame["dense_value"] > 0]
        return frame.sort_values(["feature", "rank"], kind="stable").reset_index(drop=True)

    def histogram_table(self) -> pd.DataFrame:
        """One row per feature: ``feature``, ``dense_counts`` and ``compressed_counts`` (lists over
        ``histogram_edges()``'s bins; zeros are not counted: they are the firing rates' complement)."""
        return pd.DataFrame({"feature": np.arange(self.d_sae),
                             "dense_counts": list(self.state["hist_dense"].numpy()),
                             "compressed_counts": list(self.state["hist_compressed"].numpy())})


def classify(r: np.ndarray, active: np.ndarray) -> np.ndarray:
    """survived / degraded / damaged for active features, 'inactive' otherwise."""
    r = np.asarray(r, dtype=float)
    label = np.where(r > SURVIVAL_THRESHOLD, "survived", np.where(r < DAMAGE_THRESHOLD, "damaged", "degraded"))
    return np.where(np.asarray(active, dtype=bool), label, "inactive").astype(object)


def summarize(table: pd.DataFrame, n_tokens: int | None = None) -> dict[str, float]:
    """Fractions of active features per class, mean and median r, counts."""
    active = table[table["active"]]
    n_active = int(len(active))
    out: dict[str, float] = {"n_active": n_active, "n_features": int(len(table)),
                             "n_tokens": int(n_tokens if n_tokens is not None else table.attrs.get("n_tokens", 0))}
    if n_active == 0:
        return {**out, **{f"{c}_frac": float("nan") for c in (*CLASSES, "dead_after")},
                "mean_r": float("nan"), "median_r": float("nan"), "mean_firing_jaccard": float("nan"),
                "median_magnitude_ratio": float("nan")}
    for name in CLASSES:
        out[f"{name}_frac"] = float((active["fidelity_class"] == name).mean())
    out["dead_after_frac"] = float(active["dead_after"].mean())
    out["mean_r"], out["median_r"] = float(active["r"].mean()), float(active["r"].median())
    out["mean_firing_jaccard"] = float(active["firing_jaccard"].mean())
    out["median_magnitude_ratio"] = float(active["magnitude_ratio"].median())
    return out


# ------------------------------------------------------------------ the audit itself
@dataclass
class FeatureAudit:
    table: pd.DataFrame  # one row per SAE feature, TABLE_COLUMNS
    summary: dict[str, float]  # summarize() over all tokens, plus the subset spread and exclusions
    subset_summaries: list[dict[str, float]]
    perplexity: dict[str, float] | None = None  # {"dense", "compressed", "delta_pct"} on the audit tokens
    cards: "CardRecorder | None" = None  # with card_top_k > 0: what the feature cards need, from the same pass


ARCHITECTURE_FIELDS = ("original_architecture", "model_name", "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab",
                       "n_ctx", "act_fn", "normalization_type", "positional_embedding_type", "n_key_value_heads")


def check_same_architecture(dense, compressed, hook_name: str) -> tuple[int, ...]:
    """ValueError unless both HookedTransformers have the same configuration and ``hook_name``
    has the same per-token shape in both; returns that shape. A frozen SAE can only read a
    compressed model whose residual basis is the dense one (a distilled student is not)."""
    from sae_core.sae_io import hook_activation_width

    if type(dense.cfg) is not type(compressed.cfg):
        raise ValueError(f"dense and compressed configs differ in kind: {type(dense.cfg).__name__} vs {type(compressed.cfg).__name__}")
    differs = {f: (getattr(dense.cfg, f, None), getattr(compressed.cfg, f, None)) for f in ARCHITECTURE_FIELDS
               if f != "model_name" and getattr(dense.cfg, f, None) != getattr(compressed.cfg, f, None)}
    if differs:
        raise ValueError(f"the compressed model's architecture differs from the dense one: {differs}; the feature audit "
                         "reads both with one frozen SAE, which needs the same architecture")
    shapes = hook_activation_width(dense, hook_name), hook_activation_width(compressed, hook_name)
    if shapes[0] != shapes[1]:
        raise ValueError(f"hook {hook_name!r} has per-token shape {shapes[0]} on the dense model and {shapes[1]} on the compressed one")
    return shapes[0]


HF_SHAPE_KEYS = ("model_type", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads", "n_head",
                 "num_key_value_heads", "head_dim", "intermediate_size", "n_inner", "vocab_size")


def check_same_hf_config(dense_hf, compressed_hf) -> None:
    """The cheap early form of ``check_same_architecture`` on two Hugging Face models (before any
    HookedTransformer is built): same config class and same shape-defining fields."""
    a, b = dense_hf.config, compressed_hf.config
    if type(a) is not type(b):
        raise ValueError(f"the compressed model's config is a {type(b).__name__}, the dense model's a {type(a).__name__}; "
                         "the feature audit needs the same architecture")
    differs = {k: (getattr(a, k, None), getattr(b, k, None)) for k in HF_SHAPE_KEYS if getattr(a, k, None) != getattr(b, k, None)}
    if differs:
        raise ValueError(f"the compressed model's architecture differs from the dense one: {differs}")


@no_grad
def _forward(hooked, batch: torch.Tensor, hook_name: str, with_loss: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Activations at ``hook_name`` ([batch, seq, d], heads flattened) and, if asked, per-token NLL."""
    from sae_core.activations import hook_activations

    if not with_loss:
        return hook_activations(hooked, batch, hook_name), None
    loss, cache = hooked.run_with_cache(batch.to(hooked.cfg.device), names_filter=hook_name, return_type="loss", loss_per_token=True)
    acts = cache[hook_name]
    return (acts.flatten(start_dim=2) if acts.ndim == 4 else acts), loss


def audit_feature_fidelity(dense, compressed, sae, tokens: torch.Tensor, hook_name: str, *, exclude_ids: Iterable[int] = (),
                           batch_sequences: int = 16, n_subsets: int = 3, with_perplexity: bool = True,
                           perplexity_tokens: int | None = None, on_batch: Callable[[int], None] | None = None,
                           compressed_sae=None, latent_permutation=None, card_top_k: int = 0) -> FeatureAudit:
    """Run both models on ``tokens`` ``[windows, seq]``, encode with ``sae`` and compare every feature.

    Positions holding an ``exclude_ids`` token (BOS / EOS / PAD, as in activation caching) are
    dropped on both sides. With ``with_perplexity`` the forward passes run to the logits and the
    perplexity of both models on these very tokens is returned too. ``perplexity_tokens`` limits that
    to the first ``ceil(perplexity_tokens / (seq - 1))`` windows (each predicts ``seq - 1`` tokens;
    ``perplexity["tokens"]`` says how many were scored): batches past them stop at the hook, skipping
    the LM head, and a batch that straddles the limit runs to the logits but scores only its windows
    inside it. Either way each batch's hook activations are the same, so every feature figure is.

    ``compressed_sae`` (default: ``sae``) encodes the compressed model's side instead, e.g. an SAE
    variant fixed for the compressed model; ``latent_permutation`` (``perm[j]`` = the compressed
    side's latent compared with ``sae``'s latent j, e.g. from
    ``sae_core.variants.identity.match_latents``) reorders its codes first.

    ``card_top_k > 0``: ``FeatureAudit.cards`` holds a ``CardRecorder`` filled in this same pass
    (top-``card_top_k`` positions per feature by dense activation, both sides' histograms); window
    indices are rows of ``tokens``. It changes none of the other outputs.
    """
    import torch

    from sae_core.sae_io import check_sae_matches_hook, flat_sae_inputs, no_hook_z_reshaping

    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise ValueError(f"tokens must be an integer tensor [windows, seq], got {getattr(tokens, 'shape', tokens)!r}")
    if n_subsets < 2:
        raise ValueError(f"n_subsets must be >= 2 to measure a spread, got {n_subsets}")
    if len(tokens) < n_subsets:
        raise ValueError(f"{len(tokens)} token windows cannot be split into {n_subsets} subsets")
    if batch_sequences < 1:
        raise ValueError(f"batch_sequences must be >= 1, got {batch_sequences}")
    if card_top_k < 0:
        raise ValueError(f"card_top_k must be >= 0, got {card_top_k}")
    if perplexity_tokens is not None and perplexity_tokens < 1:
        raise ValueError(f"perplexity_tokens must be >= 1 (or None: every token), got {perplexity_tokens}")
    # Windows whose next-token losses count towards the perplexity (all of them by default).
    scored_windows = 0 if not with_perplexity else len(tokens) if perplexity_tokens is None else \
        min(len(tokens), math.ceil(perplexity_tokens / max(1, tokens.shape[1] - 1)))
    check_same_architecture(dense, compressed, hook_name)  # before any heavy work
    check_sae_matches_hook(sae, dense, hook_name)
    other = sae if compressed_sae is None else compressed_sae
    if other is not sae:
        check_sae_matches_hook(other, compressed, hook_name)
    perm = None if latent_permutation is None else torch.as_tensor(np.asarray(latent_permutation), dtype=torch.long)
    if perm is not None and (perm.ndim != 1 or len(perm) != int(sae.cfg.d_sae)):
        raise ValueError(f"latent_permutation must have one entry per latent of sae ({sae.cfg.d_sae}), got {tuple(perm.shape)}")
    if perm is None and int(other.cfg.d_sae) != int(sae.cfg.d_sae):
        raise ValueError(f"compressed_sae has {other.cfg.d_sae} latents, sae {sae.cfg.d_sae}: pass a latent_permutation")
    excluded = torch.tensor(sorted(set(int(i) for i in exclude_ids)), dtype=torch.long)
    d_sae = int(sae.cfg.d_sae)
    subsets = [FeatureMoments(d_sae) for _ in range(n_subsets)]
    cards = CardRecorder(d_sae, card_top_k) if card_top_k > 0 else None
    nll = {"dense": 0.0, "compressed": 0.0}
    n_predicted = n_excluded = 0
    with no_hook_z_reshaping(sae), no_hook_z_reshaping(other):
        for start in range(0, len(tokens), batch_sequences):
            batch = tokens[start:start + batch_sequences]
            scored = max(0, min(len(batch), scored_windows - start))  # this batch's windows inside the perplexity tokens
            acts_x, loss_x = _forward(dense, batch, hook_name, scored > 0)
            acts_y, loss_y = _forward(compressed, batch, hook_name, scored > 0)
            if scored:
                nll["dense"] += float(loss_x[:scored].double().sum())
                nll["compressed"] += float(loss_y[:scored].double().sum())
                n_predicted += loss_x[:scored].numel()
            keep = ~torch.isin(batch, excluded)
            n_excluded += int((~keep).sum())
            window_subset = (torch.arange(start, start + len(batch)) % n_subsets)[:, None].expand_as(batch)
            for index, moments in enumerate(subsets):
                rows = (keep & (window_subset == index)).to(acts_x.device)
                if rows.any():
                    x = sae.encode(flat_sae_inputs(sae, acts_x[rows]).to(sae.device, sae.dtype))
                    y = other.encode(flat_sae_inputs(other, acts_y[rows]).to(other.device, other.dtype))
                    if perm is not None:
                        y = y[:, perm.to(y.device)]
                    moments.update(x, y.to(x.device))
                    if cards is not None:  # rows come out of the boolean mask in row-major (window, position) order
                        where = rows.nonzero().cpu()
                        cards.update(x, y.to(x.device), where[:, 0] + start, where[:, 1])
            if on_batch is not None:
                on_batch(len(batch))
    total = subsets[0]
    for moments in subsets[1:]:
        total = total.merged(moments)
    table = total.table()
    subset_summaries = [summarize(m.table()) for m in subsets]
    summary = {**summarize(table), **subset_spread(subset_summaries), "n_subsets": n_subsets, "n_excluded_positions": n_excluded}
    perplexity = None
    if with_perplexity:
        ppl_x, ppl_y = math.exp(nll["dense"] / n_predicted), math.exp(nll["compressed"] / n_predicted)
        perplexity = {"dense": ppl_x, "compressed": ppl_y, "delta_pct": 100.0 * (ppl_y / ppl_x - 1.0), "tokens": n_predicted}
        summary["perplexity_tokens"] = n_predicted  # the perplexity's own token count (perplexity_tokens may cap it)
    return FeatureAudit(table=table, summary=summary, subset_summaries=subset_summaries, perplexity=perplexity, cards=cards)


def subset_spread(subset_summaries: list[dict[str, float]]) -> dict[str, float]:
    """Sample std and range (max − min) of the class fractions across disjoint token subsets."""
    out: dict[str, float] = {}
    for name in ("survived_frac", "damaged_frac", "mean_r"):
        values = np.array([s[name] for s in subset_summaries], dtype=float)
        out[f"{name}_subset_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        out[f"{name}_subset_range"] = float(values.max() - values.min()) if len(values) else float("nan")
    return out


# ------------------------------------------------------------------ comparing two compressions
def compare_methods(table_a: pd.DataFrame, table_b: pd.DataFrame) -> dict[str, float]:
    """Do two compressions damage the same features? Over features active in both tables:
    Jaccard of the non-survived sets (r ≤ 0.9; Duan's headline overlap) and of the damaged sets
    (r < 0.5), Spearman and Pearson of the damage scores 1 − r, and the only-A / only-B / both
    counts of non-survived features. A Jaccard of two empty sets is NaN (undefined)."""
    from scipy import stats

    merged = table_a[["feature", "r", "active"]].merge(table_b[["feature", "r", "active"]], on="feature", suffixes=("_a", "_b"))
    shared = merged[merged["active_a"] & merged["active_b"]]
    out: dict[str, float] = {"n_shared_active": int(len(shared))}
    for name, hit in (("non_survived", lambda r: r <= SURVIVAL_THRESHOLD), ("damaged", lambda r: r < DAMAGE_THRESHOLD)):
        a, b = set(shared["feature"][hit(shared["r_a"])]), set(shared["feature"][hit(shared["r_b"])])
        out[f"jaccard_{name}"] = len(a & b) / len(a | b) if a | b else float("nan")
        out[f"{name}_only_a"], out[f"{name}_only_b"], out[f"{name}_both"] = len(a - b), len(b - a), len(a & b)
    damage_a, damage_b = 1.0 - shared["r_a"].to_numpy(), 1.0 - shared["r_b"].to_numpy()
    varies = len(shared) > 2 and np.ptp(damage_a) > 0 and np.ptp(damage_b) > 0
    out["spearman_damage"] = float(stats.spearmanr(damage_a, damage_b).statistic) if varies else float("nan")
    out["pearson_damage"] = float(stats.pearsonr(damage_a, damage_b).statistic) if varies else float("nan")
    return out


# ------------------------------------------------------------------ which features survive?
PREDICTORS = ("rarity", "log_mean", "log_max", "log_concentration")


def survival_predictors(table: pd.DataFrame) -> pd.DataFrame:
    """Dense-model-only statistics of each active feature (Duan, phase 5): rarity = −log rate,
    log mean, log max, log(max/mean); rate, mean and max clipped at 1e-8, max/mean at 1."""
    active = table[table["active"]]
    rate = active["dense_firing_rate"].clip(lower=LOG_CLIP)
    mean = active["dense_mean"].clip(lower=LOG_CLIP)
    peak = active["dense_max"].clip(lower=LOG_CLIP)
    return pd.DataFrame({"rarity": -np.log(rate), "log_mean": np.log(mean), "log_max": np.log(peak),
                         "log_concentration": np.log((peak / mean).clip(lower=1.0))}, index=active.index)


def survival_auc(table: pd.DataFrame, folds: int = CV_FOLDS) -> dict[str, Any]:
    """How well dense-only statistics predict ``survived`` (r > 0.9): 5-fold stratified CV ROC-AUC
    of standardized logistic regression (C=1, L2), scaler inside the pipeline (no leakage).
    ``status`` is 'skipped' with a reason when either class has fewer than ``folds`` features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X = survival_predictors(table)
    y = (table.loc[X.index, "fidelity_class"] == "survived").to_numpy()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    base = {"n": int(len(y)), "n_survived": n_pos, "n_not_survived": n_neg}
    if min(n_pos, n_neg) < folds:
        return {**base, "status": "skipped", "auc_mean": float("nan"), "auc_std": float("nan"),
                "reason": f"not enough of each class for {folds}-fold CV: {n_pos} survived, {n_neg} not (need >= {folds} each)"}
    model = Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(C=1.0, max_iter=1000))])
    scores = cross_val_score(model, X.to_numpy(), y, cv=StratifiedKFold(folds, shuffle=True, random_state=0), scoring="roc_auc")
    model.fit(X.to_numpy(), y)  # refit on everything, for the standardized coefficients only
    coefficients = dict(zip(PREDICTORS, map(float, model.named_steps["logreg"].coef_[0])))
    return {**base, "status": "ok", "auc_mean": float(scores.mean()), "auc_std": float(scores.std()), "coefficients": coefficients}


# ------------------------------------------------------------------ matched-perplexity strength
@dataclass
class MatchResult:
    strength: float  # the evaluated strength whose metric is closest to the target
    value: float
    target: float
    trace: list[tuple[float, float]]  # (strength, metric) in evaluation order


def match_strength(evaluate: Callable[[float], float], target: float, lo: float, hi: float, steps: int = 6,
                   increasing: bool = True) -> MatchResult:
    """Bisect a compression strength in [lo, hi] until ``evaluate(strength)`` (e.g. held-out
    perplexity) matches ``target``; keep the evaluated step closest to it (Duan: 6 steps on
    sparsity in [0, 0.8]). ``increasing``: the metric grows with the strength (sparsity); pass
    False for a knob that weakens the compression as it grows (bits)."""
    if not lo < hi:
        raise ValueError(f"match_strength needs lo < hi, got [{lo}, {hi}]")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not math.isfinite(target):
        raise ValueError(f"target must be finite, got {target}")
    trace: list[tuple[float, float]] = []
    for _ in range(steps):
        mid = (lo + hi) / 2
        value = float(evaluate(mid))
        trace.append((mid, value))
        if (value < target) == increasing:
            lo = mid
        else:
            hi = mid
    strength, value = min(trace, key=lambda sv: abs(sv[1] - target))
    return MatchResult(strength=strength, value=value, target=float(target), trace=trace)
