"""Feature cards: which latents compression broke, and what they were about.

For one feature audit (original SAE x compressed model, ``sae_core.feature_audit``) a card per
selected latent shows, as dashboards such as SAE-Vis / Neuronpedia do for one model, but on the
dense model and its compressed copy side by side:

- its top-activating held-out contexts (the audit's windows, chosen by the *dense* activation the
  audit recorded in its single pass, ``CardRecorder``), a window of tokens around the maximum with
  the per-token activation on the dense and on the compressed model (one forward over only those
  few windows here, no pass over the corpus);
- the histograms of its non-zero activations on both sides (the audit's fixed shared log bins);
- its audit figures: r, firing rates, firing Jaccard, magnitude ratio, class;
- the tokens its decoder direction promotes most through each model's unembedding
  (``promoted_tokens``: logit-lens style, details there).

Selection (``select_latents``): the most damaged latents (lowest r), the dead-after ones (most
frequent on the dense model first), a seeded sample of degraded ones and a few survived ones for
contrast. Bad input never raises in rendering: an audit with no active latent gives status
"empty" and a message; a token the tokenizer cannot decode shows ``UNDECODABLE``.

Plain library: no prefect.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from sae_core.lazy_torch import no_grad

# How many cards of each kind (ordered as shown), contexts per card, tokens around the maximum.
SELECTION = {"damaged": 6, "dead_after": 4, "degraded": 4, "survived": 2}
CARD_CLASSES = ("damaged", "dead_after", "degraded", "survived")
CONTEXTS_PER_CARD = 5
CONTEXT_BEFORE, CONTEXT_AFTER = 12, 4
PROMOTED_K = 10
FORWARD_BATCH = 8  # windows per forward when the cards re-read their contexts
UNDECODABLE = "\ufffd?"  # shown for a token the tokenizer fails to decode (its id in the tooltip)

FIGURE_COLUMNS = ["r", "dense_firing_rate", "compressed_firing_rate", "firing_jaccard", "magnitude_ratio", "dense_mean", "dense_max"]
CARD_COLUMNS = ["feature", "card_class", "fidelity_class", "dead_after", *FIGURE_COLUMNS,
                "ctx_window", "ctx_position", "ctx_center", "ctx_recorded_dense", "ctx_recorded_compressed",
                "ctx_token_ids", "ctx_tokens", "ctx_dense_acts", "ctx_compressed_acts",
                "hist_edges", "hist_dense", "hist_compressed",
                "promoted_dense", "promoted_dense_logits", "promoted_compressed", "promoted_compressed_logits", "promoted_note"]


# ------------------------------------------------------------------ which latents get a card
def empty_reason(table: pd.DataFrame) -> str | None:
    """Why an audit table gives no cards, or None when it has active latents."""
    if table is None or len(table) == 0:
        return "the feature audit holds no latents"
    n_active = int(np.asarray(table["active"], dtype=bool).sum())
    if n_active == 0:
        return (f"the feature audit found no active latent (none of {len(table)} fires on more than 0.1% of the dense "
                "model's tokens): no feature cards")
    return None


def select_latents(table: pd.DataFrame, selection: dict[str, int] | None = None, *, seed: int = 0,
                   has_contexts: Iterable[int] | None = None) -> pd.DataFrame:
    """The latents that get a card: ``feature, card_class`` in display order.

    Over active latents (``table`` is the audit's table): ``dead_after`` (active on the dense model,
    never fires compressed; most frequent first), ``damaged`` (r < 0.5 and not dead after; lowest r
    first), ``degraded`` and ``survived`` (seeded samples, shown by r). ``has_contexts``: only
    latents with a recorded context (a positive dense activation) qualify."""
    counts = {**SELECTION, **(selection or {})}
    active = table[np.asarray(table["active"], dtype=bool)]
    if has_contexts is not None:
        active = active[active["feature"].isin(set(int(f) for f in has_contexts))]
    dead = active["dead_after"].astype(bool)
    pools = {
        "dead_after": active[dead].sort_values(["dense_firing_rate", "feature"], ascending=[False, True]),
        "damaged": active[~dead & (active["fidelity_class"] == "damaged")].sort_values(["r", "feature"]),
        "degraded": active[~dead & (active["fidelity_class"] == "degraded")],
        "survived": active[~dead & (active["fidelity_class"] == "survived")],
    }
    rng = np.random.default_rng(seed)
    chosen = []
    for name in CARD_CLASSES:
        pool, n = pools[name], int(counts.get(name, 0))
        if name in ("degraded", "survived") and len(pool) > n:
            pool = pool.iloc[np.sort(rng.choice(len(pool), size=n, replace=False))]
        if name in ("degraded", "survived"):
            pool = pool.sort_values(["r", "feature"])
        chosen.append(pd.DataFrame({"feature": pool["feature"].head(n).astype(int).to_numpy(), "card_class": name}))
    return pd.concat(chosen, ignore_index=True)


def pick_contexts(topk: pd.DataFrame, features: Iterable[int], per_card: int = CONTEXTS_PER_CARD) -> pd.DataFrame:
    """Per feature, its highest recorded dense activations, at most one per window (``per_card`` of them)."""
    wanted = topk[topk["feature"].isin(set(int(f) for f in features))].sort_values(["feature", "rank"])
    wanted = wanted.drop_duplicates(["feature", "window"], keep="first")
    return wanted.groupby("feature", sort=False).head(per_card).reset_index(drop=True)


# ------------------------------------------------------------------ tokens, activations, logits
def decode_token(tokenizer, token_id: int) -> str:
    """One token as text; ``UNDECODABLE`` when the tokenizer raises or returns no string."""
    try:
        text = tokenizer.decode([int(token_id)])
    except Exception:  # noqa: BLE001 - any tokenizer failure is a placeholder, never a crash
        return UNDECODABLE
    return text if isinstance(text, str) else UNDECODABLE


@no_grad
def latent_activations(hooked, sae, tokens, hook_name: str, features: list[int], batch_sequences: int = FORWARD_BATCH):
    """``[windows, seq, len(features)]`` codes of ``features`` on ``tokens`` (CPU float32); the SAE's
    full code is formed a few windows at a time and only the asked columns are kept."""
    import torch

    from sae_core.activations import hook_activations
    from sae_core.sae_io import flat_sae_inputs, no_hook_z_reshaping

    columns = torch.as_tensor(features, dtype=torch.long)
    out = []
    with no_hook_z_reshaping(sae):
        for start in range(0, len(tokens), batch_sequences):
            batch = tokens[start:start + batch_sequences]
            flat = flat_sae_inputs(sae, hook_activations(hooked, batch, hook_name))
            step = max(1, (1 << 22) // int(sae.cfg.d_sae))  # the full code, a few thousand rows at a time (~16 MB)
            kept = [sae.encode(flat[i:i + step].to(sae.device, sae.dtype))[:, columns.to(sae.device)].float().cpu()
                    for i in range(0, len(flat), step)]
            out.append(torch.cat(kept).reshape(len(batch), batch.shape[1], len(features)))
    return torch.cat(out) if out else torch.zeros((0, tokens.shape[1], len(features)))


def _layer(hook_name: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None


@no_grad
def promoted_tokens(hooked, sae, features: list[int], hook_name: str, k: int = PROMOTED_K):
    """Top-``k`` token ids and logits each latent's decoder direction promotes through ``hooked``'s
    unembedding, or ``(None, None, note)`` when the hook's space has no path to the residual stream here.

    The direction is ``W_dec[j]`` mapped into the residual stream (as is for a ``d_model``-wide hook;
    through the layer's ``W_O`` for ``attn.hook_z``; through ``W_out`` for ``mlp.hook_post``), then
    read as the final norm reads it: centred first when the model's norm is a LayerNorm (LN / LNPre),
    multiplied elementwise by the final norm's weight ``ln_final.w`` when the model has one (with
    TransformerLens' ``fold_ln`` that weight is already folded into ``W_U``, and ``ln_final`` has
    none), and finally ``@ W_U``. The norm's data-dependent scale is left out (it rescales every
    token's logit alike, so the ranking is unchanged), as is ``b_U`` (a per-token offset that does not
    depend on the latent). Logit-lens style: it says what the direction writes towards, not what the
    model does with it downstream of the hook."""
    import torch

    cfg = hooked.cfg
    directions = sae.W_dec[torch.as_tensor(features, dtype=torch.long)].detach().float().cpu()
    d_in, d_model, layer = directions.shape[1], int(cfg.d_model), _layer(hook_name)
    if hook_name.endswith("attn.hook_z") and layer is not None and d_in == cfg.n_heads * cfg.d_head:
        directions = directions @ hooked.blocks[layer].attn.W_O.detach().float().cpu().reshape(d_in, d_model)
    elif hook_name.endswith("mlp.hook_post") and layer is not None and d_in == getattr(cfg, "d_mlp", None):
        directions = directions @ hooked.blocks[layer].mlp.W_out.detach().float().cpu()
    elif d_in != d_model:
        return None, None, f"hook {hook_name!r} ({d_in} wide) has no direct path to the {d_model}-wide residual stream here"
    if str(getattr(cfg, "normalization_type", "") or "").startswith("LN"):
        directions = directions - directions.mean(dim=1, keepdim=True)
    weight = getattr(getattr(hooked, "ln_final", None), "w", None)
    if isinstance(weight, torch.Tensor):
        directions = directions * weight.detach().float().cpu()
    unembed = hooked.W_U.detach()  # [d_model, d_vocab]: used where it lies, in its dtype (no copy of a 262k vocabulary)
    logits = directions.to(unembed.device, unembed.dtype) @ unembed
    values, ids = logits.float().topk(min(k, logits.shape[1]), dim=1)
    return ids.cpu().numpy(), values.cpu().numpy(), ""


# ------------------------------------------------------------------ the cards
@dataclass
class Cards:
    frame: pd.DataFrame  # one row per card, CARD_COLUMNS
    status: str  # "ok" | "empty"
    message: str


def build_cards(dense, compressed, sae, tokenizer, tokens, hook_name: str, table: pd.DataFrame, topk: pd.DataFrame,
                histograms: pd.DataFrame, edges: np.ndarray, *, exclude_ids: Iterable[int] = (), selection: dict[str, int] | None = None,
                seed: int = 0, per_card: int = CONTEXTS_PER_CARD) -> Cards:
    """The cards of one audit. ``dense`` / ``compressed``: the audit's HookedTransformers; ``tokens``:
    the audit's windows (at least up to the highest window ``topk`` names); ``table``, ``topk``,
    ``histograms``: the audit's stored outputs (``FeatureMoments.table``, ``CardRecorder.topk_table``
    / ``histogram_table``) and ``edges`` their bins."""
    import torch

    reason = empty_reason(table)
    if reason is None and topk.empty:
        reason = "the feature audit recorded no top-activating context"
    if reason is not None:
        return Cards(pd.DataFrame(columns=CARD_COLUMNS), "empty", reason)
    chosen = select_latents(table, selection, seed=seed, has_contexts=topk["feature"].unique())
    if chosen.empty:
        return Cards(pd.DataFrame(columns=CARD_COLUMNS), "empty", "no active latent has a recorded context: no feature cards")
    features = chosen["feature"].tolist()
    contexts = pick_contexts(topk, features, per_card)
    windows = sorted(int(w) for w in contexts["window"].unique())
    if windows and windows[-1] >= len(tokens):
        raise ValueError(f"the recorded contexts name window {windows[-1]}, but only {len(tokens)} token windows were given")
    chunk = tokens[torch.as_tensor(windows, dtype=torch.long)]
    acts = {side: latent_activations(model, sae, chunk, hook_name, features) for side, model in (("dense", dense), ("compressed", compressed))}
    row_of, column_of = {w: i for i, w in enumerate(windows)}, {f: i for i, f in enumerate(features)}
    excluded = set(int(i) for i in exclude_ids)
    promoted = {side: promoted_tokens(model, sae, features, hook_name) for side, model in (("dense", dense), ("compressed", compressed))}
    by_feature = table.set_index("feature")
    hist = histograms.set_index("feature")
    records = []
    for feature, card_class in zip(features, chosen["card_class"]):
        stats = by_feature.loc[feature]
        record: dict[str, Any] = {"feature": int(feature), "card_class": card_class, "fidelity_class": str(stats["fidelity_class"]),
                                  "dead_after": bool(stats["dead_after"]), **{c: float(stats[c]) for c in FIGURE_COLUMNS}}
        ctx = {name: [] for name in ("ctx_window", "ctx_position", "ctx_center", "ctx_recorded_dense", "ctx_recorded_compressed",
                                      "ctx_token_ids", "ctx_tokens", "ctx_dense_acts", "ctx_compressed_acts")}
        for _, c in contexts[contexts["feature"] == feature].iterrows():
            window, position = int(c["window"]), int(c["position"])
            lo, hi = max(0, position - CONTEXT_BEFORE), min(tokens.shape[1], position + CONTEXT_AFTER + 1)
            ids = [int(t) for t in tokens[window, lo:hi]]
            keep = np.array([t not in excluded for t in ids])
            span = {side: acts[side][row_of[window], lo:hi, column_of[feature]].numpy().astype(float) for side in acts}
            ctx["ctx_window"].append(window)
            ctx["ctx_position"].append(position)
            ctx["ctx_center"].append(position - lo)
            ctx["ctx_recorded_dense"].append(float(c["dense_value"]))
            ctx["ctx_recorded_compressed"].append(float(c["compressed_value"]))
            ctx["ctx_token_ids"].append(ids)
            ctx["ctx_tokens"].append([decode_token(tokenizer, t) for t in ids])
            ctx["ctx_dense_acts"].append(np.where(keep, span["dense"], np.nan).tolist())  # positions the audit excludes: NaN
            ctx["ctx_compressed_acts"].append(np.where(keep, span["compressed"], np.nan).tolist())
        record.update(ctx)
        record["hist_edges"] = [float(e) for e in edges]
        record["hist_dense"] = [int(v) for v in hist.loc[feature, "dense_counts"]] if feature in hist.index else []
        record["hist_compressed"] = [int(v) for v in hist.loc[feature, "compressed_counts"]] if feature in hist.index else []
        notes = []
        for side in ("dense", "compressed"):
            ids, logits, note = promoted[side]
            i = column_of[feature]
            record[f"promoted_{side}"] = [] if ids is None else [decode_token(tokenizer, t) for t in ids[i]]
            record[f"promoted_{side}_logits"] = [] if logits is None else [float(v) for v in logits[i]]
            if note:
                notes.append(note)
        record["promoted_note"] = "; ".join(dict.fromkeys(notes))
        records.append(record)
    frame = pd.DataFrame(records, columns=CARD_COLUMNS)
    counts = chosen["card_class"].value_counts()
    message = f"{len(frame)} cards: " + ", ".join(f"{int(counts.get(c, 0))} {c.replace('_', '-')}" for c in CARD_CLASSES)
    return Cards(frame, "ok", message)


# ------------------------------------------------------------------ rendering
CARDS_CSS = """
.fc-cards { font-family: system-ui, sans-serif; font-size: 13px; }
.fc-cards h3.fc-title { margin: 1.2em 0 0.3em; }
.fc-message { color: #8a4b00; background: #fff4e0; border-left: 3px solid #e08a00; padding: 0.4em 0.7em; }
.fc-legend { color: #555; margin: 0.2em 0 0.8em; }
.fc-card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 0.8em; margin: 0.8em 0; background: #fff; }
.fc-card[data-class="damaged"] { border-left: 5px solid #c0392b; }
.fc-card[data-class="dead_after"] { border-left: 5px solid #555; }
.fc-card[data-class="degraded"] { border-left: 5px solid #e08a00; }
.fc-card[data-class="survived"] { border-left: 5px solid #2e8b57; }
.fc-head { display: flex; gap: 0.8em; align-items: baseline; flex-wrap: wrap; }
.fc-latent { font-weight: 600; font-size: 14px; }
.fc-badge { padding: 0 0.5em; border-radius: 3px; color: #fff; font-size: 12px; }
.fc-badge-damaged { background: #c0392b; } .fc-badge-dead_after { background: #555; }
.fc-badge-degraded { background: #e08a00; } .fc-badge-survived { background: #2e8b57; }
.fc-figures { color: #333; }
.fc-figures b { font-weight: 600; }
.fc-body { display: flex; gap: 1.2em; flex-wrap: wrap; align-items: flex-start; margin-top: 0.5em; }
.fc-contexts { flex: 1 1 560px; min-width: 0; overflow-x: auto; }
.fc-side-panel { flex: 0 0 300px; }
table.fc-context { border-collapse: collapse; margin: 0 0 0.5em; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
table.fc-context td { padding: 1px 1px; white-space: pre; vertical-align: middle; }
table.fc-context td.fc-side { color: #666; font-family: system-ui, sans-serif; font-size: 11px; padding-right: 0.5em; text-align: right; }
.fc-tok { display: inline-block; padding: 0 1px; border-radius: 2px; }
.fc-tok.fc-max { outline: 1.5px solid #333; }
.fc-tok.fc-excluded { color: #aaa; }
.fc-ws { color: #999; }
.fc-hist svg { display: block; }
.fc-hist-legend { font-size: 11px; color: #555; }
table.fc-promoted { border-collapse: collapse; font-size: 12px; margin-top: 0.4em; }
table.fc-promoted th, table.fc-promoted td { padding: 1px 6px; text-align: left; border-bottom: 1px solid #eee; }
table.fc-promoted td.fc-num { color: #777; text-align: right; font-variant-numeric: tabular-nums; }
.fc-note { color: #777; font-size: 11px; }
"""

_DENSE_RGB, _COMPRESSED_RGB = (31, 119, 180), (230, 85, 13)
_WHITESPACE = {" ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


def token_html(text: str) -> str:
    """Escaped token text with whitespace made visible (· space, ↵ newline, ⇥ tab) and other control characters as symbols."""
    out = []
    for ch in str(text):
        if ch in _WHITESPACE:
            out.append(f'<span class="fc-ws">{_WHITESPACE[ch]}</span>')
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f'<span class="fc-ws">{chr(0x2400 + ord(ch)) if ord(ch) < 32 else chr(0x2421)}</span>')
        else:
            out.append(html.escape(ch))
    return "".join(out) or '<span class="fc-ws">\u2205</span>'


def _list(value) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [(_list(v) if isinstance(v, (list, tuple, np.ndarray)) else v) for v in value]


def _fmt(value, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def _tokens_row(tokens: list[str], ids: list, acts: list, scale: float, center: int, rgb: tuple[int, int, int], side: str) -> str:
    cells = []
    for i, text in enumerate(tokens):
        value = acts[i] if i < len(acts) else float("nan")
        value = float("nan") if value is None else float(value)
        classes = ["fc-tok"] + (["fc-max"] if i == center else []) + (["fc-excluded"] if math.isnan(value) else [])
        alpha = 0.0 if math.isnan(value) or scale <= 0 else min(1.0, max(0.0, value / scale))
        token_id = ids[i] if i < len(ids) else "?"
        title = html.escape(f"{side}: {_fmt(value, 4) if not math.isnan(value) else 'excluded (BOS/EOS/PAD)'} · token id {token_id}",
                            quote=True)
        style = f' style="background: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.2f})"' if alpha > 0 else ""
        cells.append(f'<td><span class="{" ".join(classes)}"{style} title="{title}">{token_html(text)}</span></td>')
    return f'<tr><td class="fc-side">{side}</td>{"".join(cells)}</tr>'


def histogram_svg(edges: list[float], dense: list[int], compressed: list[int], width: int = 300, height: int = 90) -> str:
    """Both sides' counts over the shared bins, as an inline SVG (bars side by side, shared y scale)."""
    n = min(len(dense), len(compressed), max(len(edges) - 1, 0))
    if n == 0 or (sum(dense[:n]) + sum(compressed[:n])) == 0:
        return '<p class="fc-note">no non-zero activations to histogram</p>'
    nonzero = [i for i in range(n) if dense[i] or compressed[i]]
    first, last = nonzero[0], nonzero[-1]
    shown = list(range(first, last + 1))
    top = max(max(dense[i], compressed[i]) for i in shown)
    pad_bottom, pad_top = 16, 13
    plot_h = height - pad_bottom - pad_top
    bar_w = width / len(shown)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="activation histograms, dense and compressed">',
             f'<line x1="0" y1="{height - pad_bottom}" x2="{width}" y2="{height - pad_bottom}" stroke="#999" stroke-width="1"/>']
    for slot, i in enumerate(shown):
        for offset, counts, rgb, side in ((0.0, dense, _DENSE_RGB, "dense"), (0.5, compressed, _COMPRESSED_RGB, "compressed")):
            h = plot_h * counts[i] / top if top else 0
            x = slot * bar_w + offset * bar_w
            label = html.escape(f"{side}: {counts[i]} tokens in [{_fmt(edges[i])}, {_fmt(edges[i + 1])})", quote=True)
            parts.append(f'<rect x="{x:.2f}" y="{height - pad_bottom - h:.2f}" width="{max(bar_w / 2 - 0.3, 0.5):.2f}" '
                         f'height="{h:.2f}" fill="rgb{rgb}"><title>{label}</title></rect>')
    parts.append(f'<text x="0" y="{height - 3}" font-size="10" fill="#555">{html.escape(_fmt(edges[first]))}</text>')
    parts.append(f'<text x="{width}" y="{height - 3}" font-size="10" fill="#555" text-anchor="end">{html.escape(_fmt(edges[last + 1]))}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 3}" font-size="10" fill="#555" text-anchor="middle">activation (log bins)</text>')
    parts.append(f'<text x="0" y="10" font-size="10" fill="#555">tokens per bin (max {top})</text>')
    parts.append("</svg>")
    return "".join(parts)


def _promoted_table(card: dict) -> str:
    dense, compressed = _list(card.get("promoted_dense")), _list(card.get("promoted_compressed"))
    dense_logits, compressed_logits = _list(card.get("promoted_dense_logits")), _list(card.get("promoted_compressed_logits"))
    note = card.get("promoted_note") or ""
    if not dense and not compressed:
        return f'<p class="fc-note">promoted tokens: {html.escape(str(note) or "not available")}</p>'
    shared = len(set(dense) & set(compressed))
    rows = []
    for i in range(max(len(dense), len(compressed))):
        cells = []
        for tokens, logits in ((dense, dense_logits), (compressed, compressed_logits)):
            text = f'<span class="fc-tok">{token_html(tokens[i])}</span>' if i < len(tokens) else ""
            cells.append(f"<td>{text}</td><td class=\"fc-num\">{_fmt(logits[i]) if i < len(logits) else ''}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="fc-promoted"><thead><tr><th colspan="2">promoted, dense</th><th colspan="2">promoted, compressed</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table><p class="fc-note">{shared} of the top {max(len(dense), len(compressed))} '
            f'shared (decoder direction through each model\'s unembedding)</p>'
            + (f'<p class="fc-note">{html.escape(str(note))}</p>' if note else ""))


def render_card(card: dict) -> str:
    """One card as an HTML ``<section class="fc-card">``."""
    card_class = str(card.get("card_class"))
    if card_class not in CARD_CLASSES:
        card_class = "degraded"
    feature = int(card["feature"])
    figures = (f'<b>r</b> {_fmt(card.get("r"))} · <b>firing rate</b> dense {_fmt(card.get("dense_firing_rate"))} → compressed '
               f'{_fmt(card.get("compressed_firing_rate"))} · <b>Jaccard</b> {_fmt(card.get("firing_jaccard"))} · '
               f'<b>magnitude ratio</b> {_fmt(card.get("magnitude_ratio"))} · <b>dense mean / max</b> {_fmt(card.get("dense_mean"))} / '
               f'{_fmt(card.get("dense_max"))} · audit class {html.escape(str(card.get("fidelity_class")))}')
    tokens, ids = _list(card.get("ctx_tokens")), _list(card.get("ctx_token_ids"))
    dense_acts, compressed_acts = _list(card.get("ctx_dense_acts")), _list(card.get("ctx_compressed_acts"))
    centers, windows, positions = _list(card.get("ctx_center")), _list(card.get("ctx_window")), _list(card.get("ctx_position"))
    # One colour scale per card, both sides: the largest dense activation its contexts show.
    finite = [float(v) for row in dense_acts for v in row if v is not None and math.isfinite(float(v))]
    scale = max(finite) if finite and max(finite) > 0 else 1.0
    contexts = []
    for i, toks in enumerate(tokens):
        row_ids = ids[i] if i < len(ids) else []
        center = int(centers[i]) if i < len(centers) else -1
        where = f"window {windows[i]}, position {positions[i]}" if i < len(windows) and i < len(positions) else ""
        dense_row = dense_acts[i] if i < len(dense_acts) else []
        compressed_row = compressed_acts[i] if i < len(compressed_acts) else []
        peak = dense_row[center] if 0 <= center < len(dense_row) else None
        peak_c = compressed_row[center] if 0 <= center < len(compressed_row) else None
        contexts.append(f'<table class="fc-context" title="{html.escape(where, quote=True)}"><tbody>'
                        + _tokens_row(toks, row_ids, dense_row, scale, center, _DENSE_RGB, f"dense {_fmt(peak)}")
                        + _tokens_row(toks, row_ids, compressed_row, scale, center, _COMPRESSED_RGB, f"compressed {_fmt(peak_c)}")
                        + "</tbody></table>")
    if not contexts:
        contexts.append('<p class="fc-message">no recorded context for this latent</p>')
    hist = histogram_svg(_list(card.get("hist_edges")), [int(v) for v in _list(card.get("hist_dense"))],
                         [int(v) for v in _list(card.get("hist_compressed"))])
    label = card_class.replace("_", "-")
    return (f'<section class="fc-card" data-latent="{feature}" data-class="{card_class}">'
            f'<div class="fc-head"><span class="fc-latent">latent {feature}</span>'
            f'<span class="fc-badge fc-badge-{card_class}">{label}</span></div>'
            f'<div class="fc-figures">{figures}</div>'
            f'<div class="fc-body"><div class="fc-contexts">{"".join(contexts)}</div>'
            f'<div class="fc-side-panel"><div class="fc-hist">{hist}<div class="fc-hist-legend">'
            f'<span style="color: rgb{_DENSE_RGB}">■ dense</span> <span style="color: rgb{_COMPRESSED_RGB}">■ compressed</span> '
            f'non-zero activations per bin (zeros: the firing rates)</div></div>{_promoted_table(card)}</div></div></section>')


def _title(manifest: dict) -> str:
    return html.escape(f"Feature cards: {manifest.get('sae_prefix', '?')} on {manifest.get('compression') or manifest.get('model_prefix', '?')}"
                       f" ({manifest.get('hook', '?')})")


def _message(manifest: dict, text: str) -> str:
    return (f'<div class="fc-cards"><h3 class="fc-title">{_title(manifest)}</h3>'
            f'<p class="fc-message">{html.escape(text)}</p></div>')


def render_cards_frame(frame: pd.DataFrame, manifest: dict) -> str:
    """The fragment for a cards frame (``build_cards``'s) and its manifest."""
    cards = []
    for row in frame.to_dict(orient="records"):
        try:
            cards.append(render_card(row))
        except Exception as err:  # noqa: BLE001 - one bad card does not hide the others
            latent = html.escape(str(row.get("feature")), quote=True)
            kind = row.get("card_class") if row.get("card_class") in CARD_CLASSES else "degraded"
            cards.append(f'<section class="fc-card" data-latent="{latent}" data-class="{kind}"><p class="fc-message">latent {latent}: '
                         f'the card could not be drawn ({html.escape(type(err).__name__)}: {html.escape(str(err))})</p></section>')
    legend = ("Top-activating held-out contexts on the dense model (chosen by the dense activation); each shows the same tokens "
              "on the dense (blue) and the compressed (orange) model, colour ∝ activation on one scale per card, the maximum boxed. "
              "· space, ↵ newline. Hover a token for its value.")
    message = manifest.get("message")
    return (f'<div class="fc-cards" data-cards-key="{html.escape(str(manifest.get("cards_key", "")), quote=True)}">'
            f'<h3 class="fc-title">{_title(manifest)}</h3>'
            + (f'<p class="fc-legend">{html.escape(str(message))}. {html.escape(legend)}</p>' if message else
               f'<p class="fc-legend">{html.escape(legend)}</p>')
            + "".join(cards) + "</div>")


def render_cards(storage, manifest: dict) -> str:
    """An HTML fragment with the cards of one ``feature-cards`` manifest (``CARDS_CSS`` styles it).
    Never raises for data problems: an empty audit, a missing or unreadable cards file, or a card
    that cannot be drawn gives a visible ``<p class="fc-message">`` instead."""
    manifest = manifest if isinstance(manifest, dict) else {}
    try:
        if manifest.get("status") != "ok":
            return _message(manifest, str(manifest.get("message") or "no feature cards for this audit"))
        frame = storage.get_parquet(manifest["cards_key"])
    except Exception as err:  # noqa: BLE001 - a report page must show the rest
        return _message(manifest, f"the feature cards could not be read: {err}")
    if frame.empty:
        return _message(manifest, str(manifest.get("message") or "no feature cards for this audit"))
    try:
        return render_cards_frame(frame, manifest)
    except Exception as err:  # noqa: BLE001
        return _message(manifest, f"the feature cards could not be drawn: {type(err).__name__}: {err}")
