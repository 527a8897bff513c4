"""The command line this process is running, as `annotate.cli.main` received it (sys.argv[1:]
when the package is used without the CLI): for provenance and for commands printed to the user."""

from __future__ import annotations

import sys

_ARGV: list[str] | None = None


def set_argv(argv: list[str]) -> None:
    global _ARGV
    _ARGV = list(argv)


def argv() -> list[str]:
    return list(_ARGV) if _ARGV is not None else sys.argv[1:]
