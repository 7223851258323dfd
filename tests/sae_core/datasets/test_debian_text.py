"""The real-text dataset source (sae_core.datasets.debian_text) and its wiring into sae_core.datasets.sources.

Unmarked tests are pure logic (no Debian package needed); ``real_model`` ones read the installed
Debian handbook and King James Bible (``make env-real``)."""

from __future__ import annotations

import pytest
import torch

from sae_core.datasets import debian_text, sources


class CharTokenizer:
    """One token per character (ids = code points), BOS 1 / EOS 2: enough for token_windows."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) + 3 for c in text]}


def test_splits_partition_the_hash_buckets():
    covered = sorted(b for lo, hi in debian_text.SPLITS.values() for b in range(lo, hi))
    assert covered == list(range(100)), "every bucket in exactly one split"
    assert debian_text.SPLITS["train"] == (0, 80)


def test_split_of_is_stable_and_spreads():
    ids = [f"bible/Ge/{i}" for i in range(2000)]
    first = [debian_text.split_of(i) for i in ids]
    assert first == [debian_text.split_of(i) for i in ids]
    # Pinned values: a change of hash or salt would silently move text between splits (and change
    # every content hash downstream), so it must be a deliberate edit of this test.
    assert [debian_text.split_of(f"bible/Ge/{c}") for c in (1, 11, 14, 21)] == ["train", "perplexity", "validation", "perplexity"]
    share = {s: first.count(s) / len(ids) for s in debian_text.SPLITS}
    assert 0.75 < share["train"] < 0.85 and 0.07 < share["validation"] < 0.13
    assert 0.03 < share["calibration"] < 0.07 and 0.03 < share["perplexity"] < 0.07


def test_html_paragraphs_keeps_prose_drops_listings():
    html = ('<div class="section"><div class="para">Use <code class="command">apt</code> &amp; '
            '<a id="x" class="indexterm"></a>friends.\n\t More <div class="para">nested</div> text.</div>'
            '<div class="para">Before <pre class="screen">$ rm -rf /</pre> after</div>'
            '<div class="para"></div><p>not a para</p></div>')
    assert debian_text.html_paragraphs(html) == ["Use apt & friends. More nested text.", "Before after", ""]


def test_unknown_variant_and_split_are_refused():
    with pytest.raises(ValueError, match="debian-text:handbook"):
        sources.check_dataset_name("debian-text:novels")
    with pytest.raises(ValueError, match="calibration"):
        debian_text.check_split("test")
    assert not debian_text.is_real_text_dataset("debian-textbook")  # a hub id that merely starts alike


def test_missing_package_is_a_clear_error_before_reading(monkeypatch, tmp_path):
    monkeypatch.setattr(debian_text, "HANDBOOK_ROOT", tmp_path / "nowhere")
    monkeypatch.setattr(debian_text, "BIBLE_PROGRAM", "no-such-bible-program")
    for name, packages in [("debian-text:handbook", "debian-handbook"), ("debian-text:bible", "bible-kjv bible-kjv-text"),
                           ("debian-text", "debian-handbook bible-kjv bible-kjv-text")]:
        with pytest.raises(ValueError, match="make env-real") as raised:
            sources.check_dataset_name(name)  # config-validation time
        assert packages in str(raised.value) and "apt-get install" in str(raised.value)
        with pytest.raises(ValueError, match="make env-real"):
            next(sources.iter_texts(name, split="train"))


def test_calibration_windows_seeded_choice(monkeypatch):
    docs = [f"document number {i} " * 5 for i in range(60)]
    monkeypatch.setattr(debian_text, "check_real_text_name", lambda name: ("handbook",))
    monkeypatch.setattr(debian_text, "iter_real_texts", lambda name, split: iter(docs))
    tok = CharTokenizer()
    every = torch.stack(list(sources.token_windows(tok, docs, 16)))
    a = sources.calibration_windows(tok, "debian-text:handbook", 10, 16, seed=3)
    b = sources.calibration_windows(tok, "debian-text:handbook", 10, 16, seed=3)
    c = sources.calibration_windows(tok, "debian-text:handbook", 10, 16, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Each drawn window is one of the split's windows, none twice (a with-replacement draw repeats).
    rows = {tuple(r.tolist()) for r in every}
    assert all(tuple(r.tolist()) in rows for r in a) and len({tuple(r.tolist()) for r in a}) == 10
    with pytest.raises(ValueError, match="yields only"):
        sources.calibration_windows(tok, "debian-text:handbook", len(every) + 1, 16, seed=0)


# --- on the installed Debian text ----------------------------------------------------------------


@pytest.mark.real_model
def test_real_splits_are_disjoint_deterministic_and_sized():
    sources.check_dataset_name("debian-text")
    by_split = {s: debian_text.documents("debian-text", s) for s in debian_text.SPLITS}
    ids = [d.doc_id for docs in by_split.values() for d in docs]
    assert len(ids) == len(set(ids)) == 437 + 1189, "every handbook block and Bible chapter in exactly one split"
    texts = {s: {d.text for d in docs} for s, docs in by_split.items()}
    for a in texts:
        for b in texts:
            if a < b:
                assert not texts[a] & texts[b], f"{a} and {b} share a document text"
    assert [d.doc_id for d in debian_text.documents("debian-text", "validation")] == \
        [d.doc_id for d in by_split["validation"]]
    # Interleaved: the first training documents are not all from one book.
    assert {d.doc_id.split("/")[0] for d in by_split["train"][:40]} == {"handbook", "bible"}
    words = {s: sum(len(d.text.split()) for d in docs) for s, docs in by_split.items()}
    assert words["train"] > 700_000 and words["calibration"] > 40_000 and words["perplexity"] > 30_000
    assert next(sources.iter_texts("debian-text:bible", split="perplexity")) == \
        debian_text.documents("debian-text:bible", "perplexity")[0].text


@pytest.mark.real_model
def test_handbook_translations_align_by_paragraph():
    english = dict(debian_text.handbook_pages("en-US"))
    german = dict(debian_text.handbook_pages("de-DE"))
    assert english.keys() == german.keys()
    assert all(len(english[p]) == len(german[p]) for p in english)
    assert sum(len(p) for p in english.values()) > 3000
    with pytest.raises(ValueError, match="known languages"):
        debian_text.handbook_pages("xx-XX")
