"""A kill switch's reason reaches every application its guards stop, and `spendstream budgets`: no personal data."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from spendstream.cli import main


@pytest.mark.parametrize(
    ("reason", "screened"),
    [
        ("loops since jane.doe@example.com changed the prompt", "[redacted e-mail]"),
        ("leaked key sk-proj-CanaryKey0123456789abcdefXYZ", "[redacted secret]"),
        ("call +1 415 555 0199 before lifting", "[redacted phone]"),
    ],
)
def test_a_kill_reason_with_personal_data_is_refused_before_anything_is_set(reason: str, screened: str) -> None:
    result = CliRunner().invoke(main, ["kill", "--agent", "coder", "--reason", reason])
    assert result.exit_code == 2
    assert "Invalid value for --reason: it holds personal data or a secret" in result.output
    assert screened in result.output
    assert "jane.doe" not in result.output and "CanaryKey" not in result.output and "555 0199" not in result.output
