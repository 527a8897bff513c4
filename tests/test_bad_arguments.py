"""Arguments no command can use are refused in one line with exit 2, before anything is read or
written (each was a traceback, a wrong exit code or a wrong file before)."""

import pytest
import torch

from annotate.cli import main

from helpers import Case, _hashes

RUN_CASES = {
    "--batch-size 0": (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    "--batch-size -3": (["--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
    "--workers 0": (["--workers", "0"], "--workers must be at least 1"),
    "--device nosuch": (["--device", "nosuch"], "not a torch device"),
}
if not torch.cuda.is_available():
    RUN_CASES["--device cuda without a GPU"] = (["--device", "cuda"], "no CUDA GPU is visible")


@pytest.mark.parametrize("name", sorted(RUN_CASES))
def test_run_argument_no_run_can_use_is_one_line(tmp_path, micro_model, capsys, name):
    extra, message = RUN_CASES[name]
    case = Case(tmp_path, micro_model).write()
    before = _hashes(tmp_path)
    assert main(case.argv(*extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert _hashes(tmp_path) == before


def test_demo_with_no_objects_is_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--n-objects", "-1", "--no-progress"]) == 2
    assert "--n-objects must be at least 1, got -1" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("preview, out, message", [("0", "sheet.png", "--preview must be at least 1"),
                                                   ("-2", "sheet.png", "--preview must be at least 1"),
                                                   ("4", "sheet.h5", "give --out a .png name")])
def test_render_preview_that_cannot_be_drawn_is_one_line(tmp_path, capsys, preview, out, message):
    assert main(["render", "--store", str(tmp_path / "s.h5"), "--out", str(tmp_path / out), "--preview", preview]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / out).exists()


def test_crosscheck_arguments_are_checked_before_reading(tmp_path, capsys):
    target = tmp_path / "report.txt"
    target.write_text("keep me")
    assert main(["crosscheck", "--catalog", str(tmp_path / "c.fits"), "--n-sheet", "-1"]) == 2
    assert "--n-sheet must be at least 0" in capsys.readouterr().err
    assert main(["crosscheck", "--catalog", str(tmp_path / "c.fits"), "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_scheduler_slurm_without_a_profile_names_the_right_flag(tmp_path, capsys):
    for command in (["demo", "--out", str(tmp_path / "demo")], ["render", "--store", str(tmp_path / "s.h5"),
                                                                 "--out", str(tmp_path / "i.h5")]):
        assert main([*command, "--scheduler", "slurm"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("annotate: error: --scheduler slurm needs --profile") and len(err.splitlines()) == 1
    help_text = _help(["demo", "--help"])
    assert "--profile" in help_text  # the README offers `annotate demo --scheduler slurm --profile P`


def _help(argv) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        main(argv)
    return buffer.getvalue()


def test_every_option_of_every_command_has_help_with_its_default():
    from annotate.cli import _parser

    parser = _parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.option_strings == ["-h", "--help"]:
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.default not in (None, False) and action.option_strings:
                assert "default" in action.help, f"{name} {action.option_strings} does not say its default"
    assert "exit codes:" in _help(["--help"]) and "4    SLURM jobs of a sharded run or a training run" in _help(["--help"])


def test_a_path_the_system_refuses_is_one_error_line(monkeypatch, capsys):
    """An OSError no check foresaw (a folder made read-only under the run, an output on a full
    disk) ends the command with one line naming the path and the system's reason, exit 2; with
    --debug, the traceback."""
    import annotate.cli as cli

    def refused(args):
        raise PermissionError(1, "Operation not permitted", "imm/x")

    monkeypatch.setitem(cli.COMMANDS, "status", refused)
    assert main(["status", "some.run"]) == 2
    assert capsys.readouterr().err == "annotate: error: cannot use imm/x: Operation not permitted\n"
    with pytest.raises(PermissionError):
        main(["status", "some.run", "--debug"])
    assert cli.os_error_line(OSError("Unable to open file (file signature not found)\nmore")) == \
        "Unable to open file (file signature not found)"
    assert cli.os_error_line(OSError(18, "Invalid cross-device link", "a", None, "b")) == \
        "cannot use a -> b: Invalid cross-device link"

