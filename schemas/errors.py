"""Typed errors for records, codecs and configuration.

DrivestreamError
├── ConfigError                  a setting is missing or wrong
│   ├── ClusterUnreachableError  no Kafka broker answered in time
│   └── ClusterAuthError         a broker refused the TLS/SASL credentials
├── ValidationError              a record is invalid (it goes to deadletter)
│   ├── SchemaVersionError       a schema this build cannot read
│   ├── CodecError               bytes that do not decode
│   └── SignatureError           a model envelope not signed by a trusted key (schemas.signing)
├── ProduceError                 a record was not delivered, or not in time
├── CheckpointError              a checkpoint exists but cannot be read
├── ExportError                  the model could not be exported to ONNX
├── PushError                    a trainer's delta was not delivered (trainer.kafka_io)
├── UpdatesLostError             ps-updates lost what the ps checkpoint resumes from (trainer.ps)
├── BrokerError                  the local broker could not start or stop (pipeline.broker)
└── InferenceError               raised by the serving loop (inference.errors)
    ├── ModelRejected            a published model failed a check
    └── DeliveryError            predictions could not be delivered: serving stops
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


class ProduceError(DrivestreamError):
    """A record was not delivered, or not in time; ``code`` is librdkafka's error name."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code

    @property
    def too_large(self) -> bool:
        """The broker (or librdkafka's own limit) refused the record for its size."""
        return self.code in {"MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"}


class CheckpointError(DrivestreamError):
    """A checkpoint exists but cannot be read; move it away to start fresh."""


class ExportError(DrivestreamError):
    """The model could not be exported or its graph does not expose its parameters."""
