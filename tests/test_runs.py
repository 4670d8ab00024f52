"""runs.usage_errors: bad input ends a tool with one `<program>: error: <message>` line and status 2; bugs still raise.

Each CLI's own bad-input tests (test_sample, test_evaluate, test_export, test_metrics_cli) check it end to end.
"""

from __future__ import annotations

import pytest

from artv_jax import runs


@pytest.mark.parametrize("error", [runs.UsageError("give\n  --workdir.\n"), FileNotFoundError("no such\tfile"),
                                   ValueError("bad  value")])
def test_bad_input_is_one_line_and_status_2(capsys, error):
    with pytest.raises(SystemExit) as exit_info:
        with runs.usage_errors("artv_jax.tool"):
            raise error
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"artv_jax.tool: error: {' '.join(str(error).split())}\n"
    assert len(captured.err.splitlines()) == 1


def test_only_bad_input_is_caught(capsys):
    with pytest.raises(KeyError):
        with runs.usage_errors("artv_jax.tool"):
            raise KeyError("a bug")
    with pytest.raises(SystemExit):
        with runs.usage_errors("artv_jax.tool", FileExistsError):
            raise FileExistsError("out exists")
    assert capsys.readouterr().err == "artv_jax.tool: error: out exists\n"
