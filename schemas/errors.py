"""Typed errors for records, codecs and configuration.

DrivestreamError
├── ConfigError                  a setting is missing or wrong
│   ├── ClusterUnreachableError  no Kafka broker answered in time
│   └── ClusterAuthError         a broker refused the TLS/SASL credentials
└── ValidationError              a record is invalid (it goes to deadletter)
    ├── SchemaVersionError       a schema this build cannot read
    └── CodecError               bytes that do not decode
"""

from __future__ import annotations


class DrivestreamError(Exception):
    """Base class of every error drivestream raises on purpose."""


class ConfigError(DrivestreamError):
    """A setting is missing or out of range; the message says which and how to fix it."""


class ClusterUnreachableError(ConfigError):
    """No broker answered within the timeout; the message names the settings to check."""


class ClusterAuthError(ConfigError):
    """A broker refused the connection's credentials (SASL) or access (ACLs)."""


class ValidationError(DrivestreamError):
    """A record failed validation; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class SchemaVersionError(ValidationError):
    """A record carries a schema name or version this build cannot read."""

    def __init__(self, found: str, expected: str) -> None:
        super().__init__("schema", f"unknown schema {found!r}, this build reads {expected!r}")


class CodecError(ValidationError):
    """Bytes could not be decoded into a record (truncated, corrupt or wrong type)."""
