"""The toy world is deterministic, meaningful, and an ordinary HF model folder."""

from __future__ import annotations

from sae_core.hashing import folder_hash
from sae_core.toy.corpus import generate_corpus
from sae_core.toy.lexicon import CITIES, PROFESSIONS
from sae_core.toy.world import ToyWorldConfig, build_toy_world


def test_corpus_is_a_pure_function_of_the_seed():
    a, b, c = generate_corpus(200, seed=3), generate_corpus(200, seed=3), generate_corpus(200, seed=4)
    assert a == b and a != c


def test_documents_carry_their_ground_truth():
    docs = generate_corpus(400, seed=0)
    kinds = {d.kind for d in docs}
    assert kinds == {"bio", "city", "spelling", "counting"}
    for doc in docs:
        if doc.kind == "bio":
            assert doc.attributes["profession"] in PROFESSIONS
            assert PROFESSIONS[doc.attributes["profession"]][0] in doc.text
            pronoun = " He " if doc.attributes["gender"] == "male" else " She "
            assert pronoun.strip() in doc.text
        if doc.kind == "city":
            country, continent, language = CITIES[doc.attributes["city"]]
            assert country in doc.text and continent in doc.text and language in doc.text
        if doc.kind == "spelling":
            for word in doc.attributes["words"]:
                assert f"{word} has the first letter: {word[0].upper()}." in doc.text


def test_building_twice_gives_identical_files(tmp_path):
    cfg = ToyWorldConfig(n_documents=300, vocab_size=400, d_model=32, n_head=2, n_ctx=32, train_steps=5, batch_size=4)
    first = build_toy_world(tmp_path / "a", cfg, progress=False)
    second = build_toy_world(tmp_path / "b", cfg, progress=False)
    assert folder_hash(first.model_dir) == folder_hash(second.model_dir)
    third = build_toy_world(tmp_path / "c", cfg.model_copy(update={"seed": 1}), progress=False)
    assert folder_hash(third.model_dir) != folder_hash(first.model_dir)


def test_the_test_world_learned_its_corpus(toy_world):
    # A trained model, not noise: loss fell far below uniform over the vocabulary (ln 1024 = 6.9).
    assert toy_world.train_stats["final_loss"] < 0.6 * toy_world.train_stats["first_loss"]
