"""Every subcommand answers --help with examples; unknown input is a one-line error, not a traceback."""

from __future__ import annotations

import pytest

from crossderm.cli import build_parser, main

COMMANDS = [
    "download", "synth", "prepare", "cv", "pool", "predict", "export", "evaluate", "report", "ablate", "serve",
    "explain", "demo",
]


def test_every_command_is_registered() -> None:
    parser = build_parser()
    registered = next(a for a in parser._actions if a.dest == "command").choices
    assert list(registered) == COMMANDS  # pipeline order in `crossderm --help`


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "example" in capsys.readouterr().out


def test_missing_data_dir_is_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = main(["cv", "--config", "demo_b_joint", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "manifest.csv: not found" in err


def test_unknown_preset_lists_the_presets(tmp_path, capsys: pytest.CaptureFixture) -> None:
    code = main(["cv", "--config", "paper_c", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "paper_b_joint_convnext_tiny" in err and "demo_a_ham_only" in err
