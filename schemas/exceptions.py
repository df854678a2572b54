"""Errors of the schemas package.

SpendstreamError                  (root of every spendstream error)
└── ConfigError                   a config file that cannot be used: file, field, reason
"""

from __future__ import annotations

from pathlib import Path


class SpendstreamError(Exception):
    """Root of every error spendstream raises on purpose."""


class ConfigError(SpendstreamError):
    """A config file was refused.

    Attributes:
        path: the file that was read.
        field: the dotted path of the offending field (empty for the whole file).
        reason: what is wrong and what to do.
    """

    def __init__(self, path: Path | str, field: str, reason: str) -> None:
        self.path = str(path)
        self.field = field
        self.reason = reason
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(f"bad config {where}: {reason}")
