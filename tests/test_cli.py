"""The command line dispatcher."""
from __future__ import annotations

from ambient_fast import cli


def test_info_reports_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ops on cpu:" in out and "ambient_loss=" in out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage: ambient-fast" in capsys.readouterr().out
