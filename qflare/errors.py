"""The one error root of QFLARE, and the one test every retry loop makes.

Every failure a caller may want to handle is a ``QflareError`` subclass. Each
carries ``retriable``: retry loops look only at that flag, never at the class
name, so a new error type never needs a new ``except`` clause somewhere else.
Errors about a piece of input name the offending field in ``field``, and give
a ``reason`` from the one vocabulary :class:`qflare.reasons.Reason`.

:func:`is_transient` applies the same rule to the errors of the clients we
run on (Kafka, PostgreSQL, Redis, Elasticsearch, sockets): a loop retries what
is transient and lets everything else end the process with a clear message,
so a refused authorisation does not restart a service forever.
"""

from __future__ import annotations

import errno
import socket
import sys

from qflare.reasons import Reason

__all__ = ["QflareError", "Reason", "is_transient"]


class QflareError(Exception):
    """Root of every error QFLARE raises on purpose."""

    retriable: bool = False
    #: Short machine-readable reason, used as a metric label and in audit events.
    reason: Reason = Reason.ERROR

    def __init__(self, message: str, *, field: str | None = None, retriable: bool | None = None) -> None:
        self.field = field
        if retriable is not None:  # when the cause decides, e.g. the Kafka error behind a failed setup
            self.retriable = retriable
        text = f"{field}: {message}" if field else message
        super().__init__(text)

    @property
    def detail(self) -> dict[str, str]:
        """Facts about the error worth an audit event's ``detail`` besides the message and field."""
        return {}


class ConfigError(QflareError):
    """A setting is missing or invalid; the message names the ``QFLARE_*`` key."""

    reason = Reason.CONFIG


class StackError(QflareError):
    """A local infrastructure server could not be installed, started or stopped."""

    reason = Reason.STACK

    def __init__(self, server: str, cause: str, *, log_file: str | None = None) -> None:
        self.server = server
        self.log_file = log_file
        hint = f" (see {log_file})" if log_file else ""
        super().__init__(f"{server}: {cause}{hint}")


class TopicSetupError(QflareError):
    """A Kafka topic could not be created with its declared configuration."""

    reason = Reason.TOPIC_SETUP


# --- crypto ---------------------------------------------------------------


class CryptoError(QflareError):
    """A cryptographic operation failed for a reason other than a bad signature."""

    reason = Reason.CRYPTO


class BackendUnavailableError(CryptoError):
    """A crypto backend is not installed, or cannot do what was asked of it."""

    reason = Reason.BACKEND_UNAVAILABLE


class KeyFormatError(CryptoError):
    """Key material has the wrong algorithm, length or form."""

    reason = Reason.KEY_FORMAT


class KeyFileError(CryptoError):
    """A key file is unreadable, corrupt or too permissive; ``field`` names the bad entry."""

    reason = Reason.KEY_FILE


class KeyFileExistsError(KeyFileError):
    """Refused to overwrite an existing key file (pass ``force`` to replace it)."""

    reason = Reason.KEY_EXISTS


# --- protocol: every rejection of a received message ----------------------


class ProtocolError(QflareError):
    """A received message was rejected. Subclasses say why; ``field`` says where."""

    reason = Reason.PROTOCOL


class LimitError(ProtocolError):
    """The input exceeds a size, length, depth or count limit (checked before allocating)."""

    reason = Reason.LIMIT


class SchemaError(ProtocolError):
    """A field is missing, has the wrong type or an invalid value, or is not expected."""

    reason = Reason.SCHEMA


class TensorError(SchemaError):
    """A tensor's dtype, shape and byte length do not agree."""

    reason = Reason.TENSOR


class NonFiniteTensorError(TensorError):
    """A floating-point tensor holds NaN or infinity."""

    reason = Reason.NON_FINITE


class VersionError(ProtocolError):
    """The envelope declares a protocol version this code does not speak."""

    reason = Reason.VERSION


class SignatureError(ProtocolError):
    """The signature does not verify, or its algorithm is not supported."""

    reason = Reason.SIGNATURE


class DigestMismatchError(SignatureError):
    """The body does not hash to the signed ``body_digest``: the body was altered."""

    reason = Reason.DIGEST


class KeyMismatchError(SignatureError):
    """The signing key is known but belongs to someone other than the claimed sender."""

    reason = Reason.KEY_MISMATCH


class UnknownKeyError(ProtocolError):
    """No public key is known for ``key_id``.

    Retriable: the key may simply not have reached this consumer's key cache yet
    (enrolment and first update travel on different topics).
    """

    retriable = True
    reason = Reason.UNKNOWN_KEY

    def __init__(self, key_id: bytes) -> None:
        #: The unknown key's id, so a receiver can tell a retired device's key from a stranger's.
        self.key_id = key_id
        super().__init__(f"no public key for key_id {key_id.hex()}", field="key_id")

    @property
    def detail(self) -> dict[str, str]:
        return {"key_id": self.key_id.hex()}


class StaleMessageError(ProtocolError):
    """``ts_ms`` lies outside the accepted freshness window (too old or in the future)."""

    reason = Reason.STALE


class ReplayError(ProtocolError):
    """The (sender, id) pair was already accepted."""

    reason = Reason.REPLAY


class ChunkError(ProtocolError):
    """Chunks of one stream disagree with each other or with the reassembled body."""

    reason = Reason.CHUNK


class ChunkTimeoutError(ChunkError):
    """A chunk stream was evicted before all its chunks arrived."""

    reason = Reason.CHUNK_TIMEOUT


class Rejected(ProtocolError):
    """A verified message that a service refuses by its own rules; ``reason`` says which.

    The decoder's errors are about the message's form and signature; this is
    about its meaning for the receiver (a wrong round, an unselected device, a
    used enrolment token...), so the reason is chosen where it is raised.
    """

    def __init__(self, reason: Reason, message: str, *, field: str | None = None) -> None:
        self.reason = reason
        super().__init__(message, field=field)


# --- ml / fl --------------------------------------------------------------


class DatasetError(QflareError):
    """A dataset file is missing or malformed, or a request to load or partition one is invalid.

    The message names the file; ``field`` names the bad header field or argument.
    """

    reason = Reason.DATASET


class ModelFormatError(QflareError):
    """A model file cannot be imported or exported: not a supported format, a tensor that is not
    float32, or over the size limit. The message names the file; ``field`` the tensor when one is at fault.
    """

    reason = Reason.MODEL_FORMAT


class AggregationError(QflareError):
    """Aggregation state is corrupt or inconsistent (e.g. a checkpoint that does not decode)."""

    reason = Reason.AGGREGATION


class InvalidUpdateError(AggregationError):
    """A model update cannot be aggregated: wrong tensors or shapes, non-finite or out-of-range values."""

    reason = Reason.INVALID_UPDATE


# --- transient or not -------------------------------------------------------

#: Socket errnos that mean "the network or the peer is away", not "this can never work".
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENETRESET,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENOTCONN,
        errno.EADDRNOTAVAIL,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True when retrying later may succeed: a lost connection, a timeout, a retriable error.

    QFLARE errors and Kafka errors say so themselves (``retriable``). PostgreSQL,
    Redis and Elasticsearch errors are transient when they are about the
    connection, except a refused authentication; operating-system errors when
    they are about the network. Anything else (a bug, a refused authorisation, a
    missing file, a cancelled task) is not: the caller should stop and say why.

    The client libraries are looked up in ``sys.modules`` instead of imported: an
    edge device installs neither psycopg nor redis nor elasticsearch, and an
    exception of a library that was never imported cannot exist.
    """
    if isinstance(exc, QflareError):
        return exc.retriable
    if not isinstance(exc, Exception):
        return False  # CancelledError, KeyboardInterrupt, SystemExit: never retried
    if isinstance(exc, _classes("aiokafka.errors", "KafkaError")):
        # aiokafka marks its client-side timeout non-retriable because it will not retry it
        # itself; for a loop that reconnects, it is what a broker that went away looks like
        # (Kafka's own Java client classes TimeoutException as retriable).
        return bool(getattr(exc, "retriable", False)) or isinstance(
            exc, _classes("aiokafka.errors", "KafkaTimeoutError")
        )
    return _postgres(exc) or _redis(exc) or _elasticsearch(exc) or _network(exc)


def _classes(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """Those of ``module.<names>`` that exist if the module is already imported (see ``is_transient``)."""
    found = sys.modules.get(module)
    return tuple(getattr(found, n) for n in names if hasattr(found, n)) if found is not None else ()


def _postgres(exc: Exception) -> bool:
    if not isinstance(exc, _classes("psycopg", "OperationalError")):
        return False
    # Class 28 (invalid authorisation) is an OperationalError too, but retrying does not fix it.
    return not (getattr(exc, "sqlstate", None) or "").startswith("28")


def _redis(exc: Exception) -> bool:
    lost = _classes("redis.exceptions", "ConnectionError", "TimeoutError")
    # redis-py derives its authentication errors from ConnectionError; retrying does not fix them.
    refused = _classes("redis.exceptions", "AuthenticationError", "AuthorizationError")
    return isinstance(exc, lost) and not isinstance(exc, refused)


def _elasticsearch(exc: Exception) -> bool:
    if isinstance(exc, _classes("elastic_transport", "ConnectionError", "ConnectionTimeout")):
        # A TlsError is a ConnectionError too, but a certificate does not fix itself.
        return not isinstance(exc, _classes("elastic_transport", "TlsError"))
    if isinstance(exc, _classes("elasticsearch", "ApiError")):
        return getattr(exc, "status_code", None) in (408, 429, 502, 503, 504)
    return False


def _network(exc: Exception) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror | socket.herror):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS
