"""The image readers under a seeded fuzz run: a few hundred cases, the same ones every run.

Each case is an image set drawn message by message or a seed set changed byte-wise
(``fuzz_targets.py``); every reader runs on it, down to the planner's dry run. A case passes
when each ends in success or in a one-line criu-fw error (a reader's an ImageError naming the
image); a crash, a hang or a blow-up fails it, and hypothesis shrinks it to the smallest input.
``bench/fuzz.py`` runs 10,000 cases and prints what they came to.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from pathlib import Path

import fuzz_targets as ft
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: Derandomized: the same cases on every run, nothing stored between runs.
SEEDED = settings(
    derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return ft.write_seed(str(tmp_path_factory.mktemp("fuzz") / "seed"))


def _check(case_dir: Path, counts: collections.Counter[str]) -> None:
    outcome = ft.run_readers(str(case_dir), externals={ft.SEED_EXTERNAL: str(case_dir.parent)})
    counts[outcome.kind] += 1
    assert outcome.kind != "failure", f"{outcome.reason}\n{outcome.detail}"


def _run(test: Callable[[], None], counts: collections.Counter[str]) -> None:
    base = ft.memory_grown(0) >> 10
    test()
    assert ft.memory_grown(base) < ft.MEMORY_LIMIT
    # The cases reach every outcome: some are read, planned and accepted to the end.
    assert counts["accepted"] > 0 and counts["refused"] > 0, counts


def test_structured_image_sets(tmp_path: Path) -> None:
    case = tmp_path / "case"
    counts: collections.Counter[str] = collections.Counter()

    @settings(SEEDED, max_examples=200)
    @given(ft.structured_sets())
    def one(files: dict[str, tuple[str, list[object]]]) -> None:
        ft.write_set(str(case), files)
        _check(case, counts)

    _run(one, counts)


def test_mutated_seed_sets(seed_dir: str, tmp_path: Path) -> None:
    case = tmp_path / "case"
    counts: collections.Counter[str] = collections.Counter()

    @settings(SEEDED, max_examples=250)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        ft.apply_mutations(seed_dir, str(case), data.draw(ft.mutations(seed_dir)))
        _check(case, counts)

    _run(one, counts)


def test_the_seed_set_is_accepted(seed_dir: str) -> None:
    """Unchanged, the seed is read and planned to the end by every reader."""
    outcome = ft.run_readers(seed_dir, externals={ft.SEED_EXTERNAL: os.path.dirname(seed_dir)})
    assert (outcome.kind, outcome.reason) == ("accepted", "")
