"""A study keeps its identity when resumed; different run directories are different studies."""

from __future__ import annotations

import pytest

from endofed.server.loop import STUDY_FILE, study_id
from endofed.shared.config import ConfigError


def test_study_id_is_stable_per_run_dir_and_unique_across(tmp_path):
    a, b = tmp_path / "consortium-a" / "default", tmp_path / "consortium-b" / "default"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    first = study_id(a)
    assert study_id(a) == first  # a resumed study is the same study
    assert study_id(b) != first  # same run name elsewhere: another study
    assert len(first) == 32


def test_unreadable_study_file_is_an_error_not_a_new_study(tmp_path):
    (tmp_path / STUDY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=STUDY_FILE):
        study_id(tmp_path)
