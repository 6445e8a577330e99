from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from orderly.loms.settings import loms_settings
from orderly.notifier.settings import notifier_settings


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "orderly.toml"
    path.write_text('[notifier]\nmax_attempts = 5\ngroup = "from-file"\ninstance = "file"\n[loms]\nbatch_size = 11\n')
    monkeypatch.setenv("ORDERLY_CONFIG", str(path))
    return path


def test_flags_win_over_env_which_wins_over_the_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERLY_NOTIFIER__MAX_ATTEMPTS", "7")
    monkeypatch.setenv("ORDERLY_NOTIFIER__INSTANCE", "env")
    settings = notifier_settings(instance="flag", max_attempts=None)
    assert settings.notifier.instance == "flag"
    assert settings.notifier.max_attempts == 7
    assert settings.notifier.group == "from-file"


def test_the_relay_batch_size_comes_from_the_flag_then_env_then_file(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert loms_settings().loms.batch_size == 11
    monkeypatch.setenv("ORDERLY_LOMS__BATCH_SIZE", "22")
    assert loms_settings().loms.batch_size == 22
    assert loms_settings(batch_size=33).loms.batch_size == 33


def test_a_bad_flag_value_fails_fast(config_file: Path) -> None:
    with pytest.raises(pydantic.ValidationError):
        notifier_settings(max_attempts=0)
