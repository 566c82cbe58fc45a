"""What every CLI fault test checks: status 2 and exactly one ``i4vgen: error:`` line, without a traceback."""
from __future__ import annotations


def cli_error(capsys, *argv) -> str:
    from i4vgen_ext.standalone.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("i4vgen: error: "), err
    return lines[0]
