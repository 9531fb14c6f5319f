"""Every exception the package raises, under one root.

::

    CCIEDError
     ├── LocalError                 the caller misused the API (a ValueError too)
     │    ├── ConfigError           a bad setting (no secret, bad split name, ...)
     │    ├── SplitError            the model cannot be split as asked
     │    └── EncodeError           a tensor or message that cannot be encoded
     │         └── EncodeLimitError   above a codec limit: the receiver would refuse it
     ├── DataUnavailableError       a data set or weights file is missing (a FileNotFoundError too)
     └── RemoteError                bytes or a peer from outside misbehaved
          ├── CodecError            bytes that do not decode (a ValueError too)
          │    ├── TruncatedError         fewer bytes than the header declares
          │    ├── MalformedError         a field with an impossible value
          │    ├── UnsupportedError       an unknown version, message type, encoding or dtype
          │    ├── LimitExceededError     a length, shape or count above the configured limit
          │    └── DecompressionError     lz4 refused the block or it inflated to the wrong size
          ├── AuthenticationError   a peer without the cluster secret, or a bad tag
          ├── PeerError             a peer answered with an error message
          └── RequestTimeoutError   a peer did not answer in time (a TimeoutError too)

Local errors mean "fix your call"; remote errors mean "do not trust that peer", and the node keeps serving.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CCIEDError",
    "CodecError",
    "ConfigError",
    "DataUnavailableError",
    "DecompressionError",
    "EncodeError",
    "EncodeLimitError",
    "LimitExceededError",
    "LocalError",
    "MalformedError",
    "PeerError",
    "RemoteError",
    "RequestTimeoutError",
    "SplitError",
    "TruncatedError",
    "UnsupportedError",
]


class CCIEDError(Exception):
    """Root of every exception raised by ccied_p2p."""


class LocalError(CCIEDError, ValueError):
    """The caller asked for something impossible."""


class ConfigError(LocalError):
    """A setting is missing or invalid."""


class SplitError(LocalError):
    """A model cannot be split (or pruned) as asked."""


class EncodeError(LocalError):
    """A value cannot be encoded (wrong dtype, too large, ...)."""


class EncodeLimitError(EncodeError):
    """A message or tensor above a :class:`~ccied_p2p.codec.Limits` bound: every decoder would refuse it."""


class DataUnavailableError(CCIEDError, FileNotFoundError):
    """A data set or weights file is not on this machine; the message says how to get it."""


class RemoteError(CCIEDError):
    """Something that came from outside this process misbehaved."""


class CodecError(RemoteError, ValueError):
    """Bytes that do not decode to a valid message or tensor."""


class TruncatedError(CodecError):
    """Fewer bytes than declared."""


class MalformedError(CodecError):
    """A field holds an impossible value."""


class UnsupportedError(CodecError):
    """An unknown format version, message type, encoding or dtype."""


class LimitExceededError(CodecError):
    """A declared length, shape or count is above the configured limit."""


class DecompressionError(CodecError):
    """A compressed block is corrupt or does not inflate to its declared size."""


class AuthenticationError(RemoteError):
    """A peer failed the cluster-secret handshake or sent a frame that does not open (bad tag, replay, gap)."""


class PeerError(RemoteError):
    """A peer answered a request with an error message."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class RequestTimeoutError(RemoteError, TimeoutError):
    """A peer did not answer within the request timeout."""
