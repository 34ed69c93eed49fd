"""Helper of the command line tests: a user error is exit status 2 and one "error: ..." line on stderr."""
from __future__ import annotations

import re

from ambient_fast import cli


def user_error(capsys, argv: list[str], match: str | None = None) -> str:
    """Run `ambient-fast ARGV` in-process, expecting a user error: status 2, no traceback, the last stderr line the
    only one starting with "error:". Returns that line (checked against the regular expression `match`, searched
    as pytest.raises(match=) does). Reads (and so clears) what capsys captured."""
    capsys.readouterr()
    status = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, f"status {status}, stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert lines and [line for line in lines if line.startswith("error:")] == [lines[-1]], err[-3000:]
    if match is not None:
        assert re.search(match, lines[-1]), f"{match!r} not in {lines[-1]!r}"
    return lines[-1]
