"""Session fixtures shared by the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The workdir of a tiny shapes-world ART·V trained for 2 steps (tests/train_worker.py)."""
    from test_train import _run

    workdir = tmp_path_factory.mktemp("tiny_run") / "wd"
    _run(workdir, "--num_steps=2")
    return workdir
