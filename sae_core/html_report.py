"""The report page: one self-contained HTML file (tables, plots, feature cards, run metadata).

It opens from disk in any browser with nothing else around it: the CSS is inline, every plot is a
``data:`` URI, nothing is fetched from the network (no CDN, no web font, no script). The report
summary's markdown is rendered with markdown-it-py (tables on, raw HTML off: a metric reason or a
label cannot inject markup); the feature cards come in as HTML fragments from
``sae_core.feature_cards.render_cards`` (trusted, built by this package, their CSS given once).
"""

from __future__ import annotations

import base64
import html
import re

__all__ = ["PAGE_CSS", "build_report_page", "plot_mime", "slug"]

PAGE_CSS = """
:root { --fg: #1d232a; --muted: #5b6670; --line: #d8dee4; --bg-soft: #f4f6f8; --accent: #2457a6; --warn-bg: #fff4e5; --warn: #8a4b00; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg); }
.rp-layout { display: grid; grid-template-columns: 15rem minmax(0, 1fr); min-height: 100vh; }
.rp-toc { position: sticky; top: 0; align-self: start; max-height: 100vh; overflow-y: auto; padding: 1rem;
          border-right: 1px solid var(--line); background: var(--bg-soft); font-size: 13px; }
.rp-toc h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin: 0 0 .5rem; }
.rp-toc ol { list-style: none; padding-left: 0; margin: 0; }
.rp-toc ol ol { padding-left: .9rem; }
.rp-toc a { color: var(--fg); text-decoration: none; display: block; padding: .1rem 0; }
.rp-toc a:hover { color: var(--accent); }
main { padding: 1.2rem 2rem 4rem; min-width: 0; }
h1 { font-size: 1.6rem; margin: .2rem 0 1rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { font-size: 1.1rem; margin-top: 1.6rem; }
a { color: var(--accent); }
code { font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; background: var(--bg-soft); padding: 0 .25em; border-radius: 3px;
       overflow-wrap: anywhere; }
pre.rp-command { background: #0f1720; color: #e6edf3; padding: .6rem .8rem; border-radius: 4px; overflow-x: auto; }
pre.rp-command code { background: none; color: inherit; }
table { border-collapse: collapse; display: block; max-width: 100%; overflow-x: auto; font-size: 13px; margin: .6rem 0 1rem; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--bg-soft); position: sticky; top: 0; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.rp-meta { display: table; }
table.rp-meta th { width: 11rem; position: static; }
figure.rp-plot { margin: 1rem 0 2rem; }
figure.rp-plot img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figure.rp-plot figcaption { color: var(--muted); font-size: 13px; }
.rp-message { background: var(--warn-bg); color: var(--warn); border-left: 4px solid var(--warn); padding: .5rem .8rem; margin: .6rem 0; }
.rp-empty { color: var(--muted); font-style: italic; }
@media (max-width: 800px) { .rp-layout { display: block; } .rp-toc { position: static; max-height: none; border-right: 0; } }
@media print { .rp-toc { display: none; } .rp-layout { display: block; } }
"""

_MIME = [(b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif")]


def plot_mime(data: bytes) -> str:
    """The image type of a plot's bytes (PNG from matplotlib; SVG and JPEG also work)."""
    for magic, mime in _MIME:
        if data.startswith(magic):
            return mime
    head = data[:200].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:1000].lower()):
        return "image/svg+xml"
    return "application/octet-stream"


def slug(text: str, taken: set[str]) -> str:
    """An HTML id for a heading, unique within the page."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def _markdown():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def _render_markdown(text: str, taken: set[str], toc: list[tuple[int, str, str]]) -> str:
    """Markdown -> HTML with an id on every h2/h3 (collected into ``toc``); the document's own h1 is
    dropped (the page has its title)."""
    md = _markdown()
    tokens = md.parse(text)
    kept, skip = [], False
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h1":
            skip = True
        if skip:
            if token.type == "heading_close":
                skip = False
            continue
        if token.type == "heading_open" and token.tag in ("h2", "h3"):
            title = tokens[i + 1].content if i + 1 < len(tokens) else ""
            anchor = slug(title, taken)
            token.attrSet("id", anchor)
            toc.append((int(token.tag[1]), anchor, title))
        kept.append(token)
    return md.renderer.render(kept, md.options, {})


def _strip_plot_lines(summary: str, names) -> str:
    """The summary lists its plots as ``![name](name)`` lines (for storage readers); the page shows them
    in its own figures section instead."""
    names = set(names)
    return "\n".join(line for line in summary.splitlines()
                     if not (m := re.fullmatch(r"\s*!\[[^\]]*\]\(([^)\s]+)\)\s*", line)) or m.group(1) not in names)


def _data_uri(data: bytes) -> str:
    return f"data:{plot_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _caption(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    if stem.startswith("metrics_"):
        return "Headline metrics against SAE sparsity (" + stem[len("metrics_"):].replace("_", ", ") + ")"
    return stem.replace("_", " ")


def _metadata_rows(metadata: dict) -> str:
    rows = []
    for key, value in metadata.items():
        if key in ("command", "messages") or value is None or value == "":
            continue
        text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        cell = f'<a href="{html.escape(text)}">{html.escape(text)}</a>' if re.match(r"^(file|s3|https?)://", text) else (
            f"<code>{html.escape(text)}</code>")
        rows.append(f"<tr><th>{html.escape(str(key).replace('_', ' '))}</th><td>{cell}</td></tr>")
    return "\n".join(rows)


def build_report_page(*, title: str, summary_markdown: str, plots: dict[str, bytes], card_fragments: list[str], card_css: str,
                      metadata: dict) -> str:
    """A complete, self-contained HTML document.

    ``plots``: file name -> image bytes, inlined as ``data:`` URIs in a figures section (in name order).
    ``card_fragments``: HTML fragments (``render_cards``), placed as they are under "Feature cards";
    ``card_css`` is their stylesheet, inlined once. ``metadata``: shown as the run's table (keys as
    labels); ``metadata["command"]`` is the exact command, shown as a code block, and
    ``metadata["messages"]`` (optional list of str) are problems shown at the top of the page."""
    taken: set[str] = {"toc", "run", "figures", "feature-cards"}
    toc: list[tuple[int, str, str]] = [(2, "run", "Run")]
    messages = [str(m) for m in (metadata.get("messages") or [])]
    parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="rp-message">{html.escape(m)}</p>' for m in messages]

    parts.append('<section id="run"><h2>Run</h2>')
    command = metadata.get("command")
    if command:
        parts.append(f'<p>Command:</p><pre class="rp-command"><code>{html.escape(str(command))}</code></pre>')
    parts.append(f'<table class="rp-meta"><tbody>{_metadata_rows(metadata)}</tbody></table></section>')

    summary_toc: list[tuple[int, str, str]] = []
    body = _render_markdown(_strip_plot_lines(summary_markdown or "", plots), taken, summary_toc)
    parts.append(f'<section id="summary">{body if body.strip() else "<p class=rp-empty>No summary.</p>"}</section>')
    toc += summary_toc

    toc.append((2, "figures", "Figures"))
    figures = ['<section id="figures"><h2>Figures</h2>']
    if not plots:
        figures.append('<p class="rp-empty">No plots: nothing was measured that can be drawn.</p>')
    for name in sorted(plots):
        anchor = slug("fig-" + name.rsplit(".", 1)[0], taken)
        toc.append((3, anchor, _caption(name)))
        figures.append(f'<figure class="rp-plot" id="{anchor}"><img src="{_data_uri(plots[name])}" alt="{html.escape(name)}">'
                       f'<figcaption>{html.escape(_caption(name))} (<code>{html.escape(name)}</code>)</figcaption></figure>')
    parts.append("\n".join(figures) + "</section>")

    toc.append((2, "feature-cards", "Feature cards"))
    cards = ['<section id="feature-cards"><h2>Feature cards</h2>']
    cards += card_fragments or ['<p class="rp-empty">No feature cards in this run (no feature audit, or the cards step did not run).</p>']
    parts.append("\n".join(cards) + "</section>")

    style = (PAGE_CSS + "\n" + (card_css or "")).replace("</", "<\\/")  # CSS cannot close its <style> element
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{style}</style>", "</head>", "<body>", '<div class="rp-layout">',
        f'<nav class="rp-toc" id="toc"><h2>Contents</h2>{_toc_html(toc)}</nav>',
        "<main>", *parts, "</main>", "</div>", "</body>", "</html>", ""])


def _toc_html(entries: list[tuple[int, str, str]]) -> str:
    out, open_sub = ["<ol>"], False
    for level, anchor, text in entries:
        link = f'<a href="#{html.escape(anchor)}">{html.escape(text)}</a>'
        if level == 3:
            if not open_sub:
                if out[-1].endswith("</li>"):
                    out[-1] = out[-1][: -len("</li>")]
                else:  # a sub-entry without a parent
                    out.append("<li>")
                out.append("<ol>")
                open_sub = True
            out.append(f"<li>{link}</li>")
        else:
            if open_sub:
                out.append("</ol></li>")
                open_sub = False
            out.append(f"<li>{link}</li>")
    if open_sub:
        out.append("</ol></li>")
    out.append("</ol>")
    return "".join(out)
