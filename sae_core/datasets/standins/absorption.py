"""``sae_core/absorption_words`` (pseudo-id, no hub dataset) stand-ins: ``absorption_words/words.json``,
absorption's word list (served by :mod:`sae_core.datasets.mirror` through SAEBench's
``get_alpha_tokens``; at run time only single-token entries are used,
:func:`sae_core.datasets.mirror.single_token_words`).

Toy (:func:`build_toy`): SAEBench normally takes every purely alphabetic token of the model's
vocabulary; a toy model only knows the first letters of the words its corpus spells out (the
spelling drills over ``lexicon.WORDS``), and most of a toy BPE vocabulary is sub-word pieces. The
list holds those WORDS, bare and with a leading space, plus single-letter tokens for any letter with
fewer than two WORDS (:func:`toy_word_list`).
Real (:func:`build_real`): words per letter a-z drawn (seeded) from the most frequent corpus words of
that letter, bare and with a leading space (:func:`real_word_list`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from sae_core.datasets import debian_text
from sae_core.datasets.standins.common import real_seed, write_json
from sae_core.toy.lexicon import WORDS

# --- toy ------------------------------------------------------------------------------------------


def toy_word_list(words: list[str] | None = None) -> list[str]:
    """The absorption stand-in: the words whose first letter the toy corpus teaches (its spelling
    drills use ``lexicon.WORDS``), each bare and with a leading space. Letters with fewer than two
    such words get their single-letter tokens too, so SAEBench sees every letter a-z (it trains one
    probe per letter and fails on a missing one)."""
    words = list(WORDS if words is None else words)
    forms: list[str] = []
    for word in words:
        if word.isascii() and word.isalpha():
            forms += [word, " " + word]
    covered: dict[str, int] = {}
    for word in words:
        covered[word[0].lower()] = covered.get(word[0].lower(), 0) + 1
    for letter in "abcdefghijklmnopqrstuvwxyz":
        if covered.get(letter, 0) < 2:
            forms += [letter, letter.upper(), " " + letter.upper(), " " + letter]
    seen: set[str] = set()
    return [f for f in forms if not (f in seen or seen.add(f))]


def build_toy(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "words.json").write_text(json.dumps(toy_word_list(), indent=0) + "\n")
    return out_dir


# --- real: a subset of the real vocabulary -------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def corpus_word_counts(dataset: str = "debian-text", split: str = "train") -> dict[str, int]:
    """Lower-case alphabetic (ASCII) words of the corpus with their counts."""
    import re

    counts: dict[str, int] = {}
    for text in debian_text.iter_real_texts(dataset, split):
        for word in re.findall(r"[A-Za-z]+", text):
            word = word.lower()
            counts[word] = counts.get(word, 0) + 1
    return counts


def real_word_list(seed: int, tokenizer=None, words_per_letter: int = 48, candidates_per_letter: int = 96,
                         counts: dict[str, int] | None = None) -> list[str]:
    """For each letter a-z, ``words_per_letter`` words drawn (seeded) from its
    ``candidates_per_letter`` most frequent corpus words of 2+ letters, each as `` word`` and
    ``word``. With a tokenizer, candidates are only words whose spaced form is a single token, and
    only single-token forms are written (SAEBench's prompts need single-token words)."""
    counts = corpus_word_counts() if counts is None else counts
    rng = random.Random(real_seed(seed, "absorption_words"))
    ranked = sorted(counts, key=lambda w: (-counts[w], w))

    def single(form: str) -> bool:
        return tokenizer is None or len(tokenizer.encode(form, add_special_tokens=False)) == 1

    out: list[str] = []
    for letter in LETTERS:
        candidates = [w for w in ranked if w[0] == letter and len(w) >= 2 and single(" " + w)][:candidates_per_letter]
        if not candidates:
            raise ValueError(f"no corpus word starting with {letter!r} is a single token")
        for word in sorted(rng.sample(candidates, min(words_per_letter, len(candidates))), key=ranked.index):
            out += [form for form in (" " + word, word) if single(form)]
    return out


def build_real(out_dir: Path, seed: int, tokenizer=None, words_per_letter: int = 48) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "words.json", real_word_list(seed, tokenizer, words_per_letter))
    return out_dir



# --- a model that knows first letters, for tests and benchmarks of absorption ---------------------


def build_spelling_model(tokenizer, folder: Path) -> str:
    """A random (untrained) 2-layer GPT-2 over ``tokenizer`` with a first-letter direction planted in the
    embedding of every alphabetic token (SAEBench's own test of "alphabetic": ``ALL_ALPHA_LETTERS``), so
    that absorption's letter probes have something to find in seconds; saved with the tokenizer to
    ``folder`` (returned, as text). n_ctx 128: SAEBench's absorption prompts (10 in-context examples) are
    ~90 tokens. Seeded: the same tokenizer gives the same weights."""
    import torch
    from sae_bench.evals.absorption.vocab import ALL_ALPHA_LETTERS, convert_tokens_to_string
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_ctx=128, n_embd=64, n_layer=2, n_head=4,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id))
    wte = model.transformer.wte.weight
    letter_dirs, _ = torch.linalg.qr(torch.randn(wte.shape[1], 26, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        scale = 3.0 * wte.norm(dim=-1).mean()
        for token, token_id in tokenizer.get_vocab().items():
            word = convert_tokens_to_string(token, tokenizer)
            body = word[1:] if word.startswith(" ") else word
            if body and all(c in ALL_ALPHA_LETTERS for c in body):
                wte[token_id] += scale * letter_dirs[:, ord(body[0].lower()) - ord("a")]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
