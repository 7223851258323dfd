"""The report page: one self-contained HTML document (sae_core.html_report.build_report_page)."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

from sae_core import html_report as hr

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
SUMMARY = """# SAE transfer report

## SAE variants: cost and reconstruction

| hook | variant | l0 |
| --- | --- | --- |
| blocks.1 | pruned-wanda-50% | 16 |
| blocks.1 | <script>alert(1)</script> | 8 |

A reason with <b>markup</b> & an ampersand.

## Headline metrics

![metrics_h_wanda-0.5.png](metrics_h_wanda-0.5.png)

![frontier.png](frontier.png)
"""
CARD = ('<section class="fc-card" data-latent="7" data-class="damaged"><h4>latent 7</h4>'
        '<img src="data:image/png;base64,' + base64.b64encode(PNG).decode() + '" alt="hist"></section>')


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _page(**overrides) -> str:
    kwargs = {"title": "SAE transfer report: toy <&>", "summary_markdown": SUMMARY,
              "plots": {"metrics_h_wanda-0.5.png": PNG, "frontier.png": PNG},
              "card_fragments": [CARD], "card_css": ".fc-card { border: 1px solid #ccc; }",
              "metadata": {"command": "python -m flows.full --preset toy --storage 'file:///tmp/a b'", "experiment": "toy",
                           "config_hash": "abc123", "storage_root": "file:///tmp/root", "messages": []}}
    return hr.build_report_page(**{**kwargs, **overrides})


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


def test_page_is_a_complete_document_with_toc_tables_plots_cards_and_metadata():
    page = _page()
    tags = _parse(page)
    names = [t for t, _ in tags.tags]
    assert page.startswith("<!DOCTYPE html>") and names[:2] == ["html", "head"] and names.count("body") == 1
    assert "<table>" in page and "<td>pruned-wanda-50%</td>" in page  # the summary's markdown table rendered
    ids = {a["id"] for _, a in tags.tags if "id" in a}
    toc_links = [a["href"] for t, a in tags.tags if t == "a" and a.get("href", "").startswith("#")]
    assert {"run", "figures", "feature-cards", "sae-variants-cost-and-reconstruction", "headline-metrics"} <= ids
    assert all(link[1:] in ids for link in toc_links) and len(toc_links) >= 6  # every TOC entry lands on a section
    images = [a for t, a in tags.tags if t == "img"]
    assert len(images) == 3 and all(a["src"].startswith("data:image/png;base64,") for a in images)  # 2 plots + the card's
    assert base64.b64decode(images[0]["src"].split(",", 1)[1]) == PNG
    assert "![" not in page  # the summary's plot lines became figures
    assert 'data-latent="7"' in page and ".fc-card { border: 1px solid #ccc; }" in page
    assert "python -m flows.full --preset toy --storage &#x27;file:///tmp/a b&#x27;" in page
    assert "abc123" in page and "file:///tmp/root" in page


def test_page_escapes_text_and_loads_nothing_from_outside():
    page = _page(card_css="</style><script>bad()</script>")
    tags = _parse(page)
    assert page.count("</style>") == 1  # the CSS cannot close its element (and so cannot inject markup)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;markup&lt;/b&gt; &amp; an ampersand" in page
    assert "<title>SAE transfer report: toy &lt;&amp;&gt;</title>" in page
    assert not [t for t, _ in tags.tags if t in ("script", "link", "iframe", "object", "embed")]
    for _, attrs in tags.tags:
        assert not attrs.get("src") or attrs["src"].startswith("data:")
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page) and "@import" not in page


def test_page_shows_messages_and_says_what_is_missing():
    page = _page(summary_markdown="", plots={}, card_fragments=[],
                 metadata={"messages": ["No finished run in this storage root."], "experiment": "x"})
    assert '<p class="rp-message">No finished run in this storage root.</p>' in page
    assert "No plots" in page and "No feature cards" in page


def test_plot_types_and_slugs():
    assert hr.plot_mime(PNG) == "image/png" and hr.plot_mime(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>") == "image/svg+xml"
    taken: set[str] = set()
    assert [hr.slug("Headline metrics", taken), hr.slug("Headline metrics", taken)] == ["headline-metrics", "headline-metrics-2"]
