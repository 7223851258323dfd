"""SAEBench's own tqdm bars reach the task's progress artifacts (through the progress listener)."""

from __future__ import annotations

from tqdm import tqdm

from sae_core.progress import reporting_to
from tasks.progress import mirror_tqdm


def test_third_party_tqdm_bars_are_mirrored_only_inside_the_context():
    seen: list[tuple[str, float]] = []
    with reporting_to(lambda description, fraction: seen.append((description, fraction))):
        for _ in tqdm(range(3), desc="outside", mininterval=0, disable=False):
            pass
        with mirror_tqdm("SAEBench core"):
            for _ in tqdm(range(5), desc="Reconstruction Batches", mininterval=0):
                pass
            for _ in tqdm(iter(range(4)), desc="no total", mininterval=0):  # unknown total: terminal only
                pass
    assert seen, "nothing was mirrored"
    assert {d for d, _ in seen} == {"SAEBench core: Reconstruction Batches"}
    assert seen[-1][1] == 1.0
    # A wrong hook (patching a name SAEBench imported earlier, not tqdm's class) would see nothing here.
