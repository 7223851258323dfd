"""Code fingerprints are derived from what a task module actually imports, not from hand-kept lists.

A wrong variant is caught here: a fingerprint over a fixed module list misses an edit to a file the
list forgot (the test edits files reached only lazily, inside a function, or only by a registry's
"module:Class" string), and a fingerprint over every file invalidates unrelated artifacts (the toy
world's key must not move when an SAE-pruning file changes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.common import code_fingerprint, module_closure

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def tree_copy(tmp_path: Path) -> dict[str, Path]:
    roots = {}
    for package in ("sae_core", "tasks"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
        roots[package] = tmp_path / package
    return roots


def _touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# an edit\n")


def test_fingerprint_does_not_depend_on_where_the_tree_lies(tree_copy):
    assert code_fingerprint("tasks.saes", tree_copy) == code_fingerprint("tasks.saes")


def test_editing_an_imported_library_file_changes_the_fingerprint(tree_copy):
    before = {m: code_fingerprint(m, tree_copy) for m in ("tasks.saes", "tasks.world", "tasks.compression")}
    # sae_prune is imported lazily, inside the prune task's body: a top-level-only scan would miss it.
    _touch(tree_copy["sae_core"] / "sae_prune.py")
    after = {m: code_fingerprint(m, tree_copy) for m in before}
    assert after["tasks.saes"] != before["tasks.saes"]
    assert after["tasks.world"] == before["tasks.world"]  # the toy world does not use SAE pruning
    assert after["tasks.compression"] == before["tasks.compression"]


def test_a_module_named_only_by_a_registry_string_counts(tree_copy):
    closure = {p.relative_to(tree_copy["sae_core"]).as_posix() for p in module_closure("tasks.compression", tree_copy)
               if p.is_relative_to(tree_copy["sae_core"])}
    assert "compression/rtn.py" in closure  # reached only through "sae_core.compression.rtn:RTNMethod"
    before = code_fingerprint("tasks.compression", tree_copy)
    _touch(tree_copy["sae_core"] / "compression" / "rtn.py")
    assert code_fingerprint("tasks.compression", tree_copy) != before


def test_every_task_module_reaches_the_library_code_it_runs():
    def files(module: str) -> set[str]:
        return {p.relative_to(REPO).as_posix() for p in module_closure(module)}

    assert {"sae_core/sae_train.py", "sae_core/sae_prune.py", "sae_core/sae_quality.py", "sae_core/sae_io.py"} <= files("tasks.saes")
    assert {"sae_core/activations.py", "sae_core/models.py"} <= files("tasks.activations")
    assert {"sae_core/feature_audit.py"} <= files("tasks.feature_audit")
    assert "sae_core/compression/gptq.py" in files("tasks.compression")
