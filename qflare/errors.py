"""The one error root of QFLARE.

Every failure a caller may want to handle is a ``QflareError`` subclass. Each
carries ``retriable``: retry loops look only at that flag, never at the class
name, so a new error type never needs a new ``except`` clause somewhere else.
Errors about a piece of input name the offending field in ``field``.
"""

from __future__ import annotations


class QflareError(Exception):
    """Root of every error QFLARE raises on purpose."""

    retriable: bool = False
    #: Short machine-readable reason, used as a metric label and in audit events.
    reason: str = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        text = f"{field}: {message}" if field else message
        super().__init__(text)


class ConfigError(QflareError):
    """A setting is missing or invalid; the message names the ``QFLARE_*`` key."""

    reason = "config"


class StackError(QflareError):
    """A local infrastructure server could not be installed, started or stopped."""

    reason = "stack"

    def __init__(self, server: str, cause: str, *, log_file: str | None = None) -> None:
        self.server = server
        self.log_file = log_file
        hint = f" (see {log_file})" if log_file else ""
        super().__init__(f"{server}: {cause}{hint}")


class TopicSetupError(QflareError):
    """A Kafka topic could not be created with its declared configuration."""

    reason = "topic_setup"


# --- crypto ---------------------------------------------------------------


class CryptoError(QflareError):
    """A cryptographic operation failed for a reason other than a bad signature."""

    reason = "crypto"


class BackendUnavailableError(CryptoError):
    """A crypto backend is not installed, or cannot do what was asked of it."""

    reason = "backend_unavailable"


class KeyFormatError(CryptoError):
    """Key material has the wrong algorithm, length or form."""

    reason = "key_format"


class KeyFileError(CryptoError):
    """A key file is unreadable, corrupt or too permissive; ``field`` names the bad entry."""

    reason = "key_file"


class KeyFileExistsError(KeyFileError):
    """Refused to overwrite an existing key file (pass ``force`` to replace it)."""

    reason = "key_exists"


# --- protocol: every rejection of a received message ----------------------


class ProtocolError(QflareError):
    """A received message was rejected. Subclasses say why; ``field`` says where."""

    reason = "protocol"


class LimitError(ProtocolError):
    """The input exceeds a size, length, depth or count limit (checked before allocating)."""

    reason = "limit"


class SchemaError(ProtocolError):
    """A field is missing, has the wrong type or an invalid value, or is not expected."""

    reason = "schema"


class TensorError(SchemaError):
    """A tensor's dtype, shape and byte length do not agree."""

    reason = "tensor"


class NonFiniteTensorError(TensorError):
    """A floating-point tensor holds NaN or infinity."""

    reason = "non_finite"


class VersionError(ProtocolError):
    """The envelope declares a protocol version this code does not speak."""

    reason = "version"


class SignatureError(ProtocolError):
    """The signature does not verify, or its algorithm is not supported."""

    reason = "signature"


class DigestMismatchError(SignatureError):
    """The body does not hash to the signed ``body_digest``: the body was altered."""

    reason = "digest"


class KeyMismatchError(SignatureError):
    """The signing key is known but belongs to someone other than the claimed sender."""

    reason = "key_mismatch"


class UnknownKeyError(ProtocolError):
    """No public key is known for ``key_id``.

    Retriable: the key may simply not have reached this consumer's key cache yet
    (enrolment and first update travel on different topics).
    """

    retriable = True
    reason = "unknown_key"


class StaleMessageError(ProtocolError):
    """``ts_ms`` lies outside the accepted freshness window (too old or in the future)."""

    reason = "stale"


class ReplayError(ProtocolError):
    """The (sender, id) pair was already accepted."""

    reason = "replay"


class ChunkError(ProtocolError):
    """Chunks of one stream disagree with each other or with the reassembled body."""

    reason = "chunk"


class ChunkTimeoutError(ChunkError):
    """A chunk stream was evicted before all its chunks arrived."""

    reason = "chunk_timeout"


# --- ml / fl --------------------------------------------------------------


class DatasetError(QflareError):
    """A dataset file is missing or malformed, or a request to load or partition one is invalid.

    The message names the file; ``field`` names the bad header field or argument.
    """

    reason = "dataset"


class AggregationError(QflareError):
    """Aggregation state is corrupt or inconsistent (e.g. a checkpoint that does not decode)."""

    reason = "aggregation"


class InvalidUpdateError(AggregationError):
    """A model update cannot be aggregated: wrong tensors or shapes, non-finite or out-of-range values."""

    reason = "invalid_update"
