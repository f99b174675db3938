"""``--print_config`` output is accepted back as a config, for every shipped task config."""

import contextlib
import io
from pathlib import Path

import pytest

from cbsa_dense.cli import main
from tests.conftest import TASK_CONFIGS, cli_user_error

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = TASK_CONFIGS


def _print_config(*args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return out.getvalue()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_printed_config_is_a_fixed_point(config, tmp_path):
    printed = _print_config("--config", str(config))
    assert "model:" in printed and "class_path:" in printed
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert _print_config("--config", str(saved)) == printed


def test_unknown_key_names_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "demo_seg.yaml").read_text() + "\nbogus_key: 1\n")
    line = cli_user_error(["fit", "--config", str(bad), "--print_config"], capsys)
    assert "bogus_key" in line and "Union" not in line, line
