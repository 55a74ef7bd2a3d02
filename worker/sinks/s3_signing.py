"""Which S3 requests have their body hashed for the SigV4 signature.

SigV4 signs a request's headers, and its body through a SHA-256 of it unless the request says
``UNSIGNED-PAYLOAD``. botocore leaves the body unsigned only over https, and only when a checksum
header (``Content-MD5`` or ``x-amz-checksum-*``) is there: the store checks the body against the
checksum, and the checksum is a signed header, so neither can be changed on the way unnoticed.

That reasoning does not depend on TLS, so a request that carries our ``x-amz-checksum-sha256`` is
sent with an unsigned payload on http too. Its body is then hashed once (for the checksum, in a
thread) instead of twice, the second time on the event loop, where 1 GiB of parts held the loop
for about 0.75 s and copied every byte once more to read it. A request without that checksum (a
store that refused checksums, ``checksum_mode="off"``) keeps its signed body, as botocore decides.

botocore reads the choice from the request's client configuration (``s3`` section,
``payload_signing_enabled``); a hook gives such requests the client's configuration with that
option off. Should botocore stop consulting it, the body is signed again: slower, never weaker
(``tests/test_sink_s3_guards.py`` notices).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.config import Config

CHECKSUM_HEADER = "x-amz-checksum-sha256"
# The event, for every S3 operation, that botocore emits right before it signs a request.
BEFORE_SIGN_EVENT = "before-sign.s3"


def unsigned_payload_when_checksummed(unsigned: Config) -> Callable[..., None]:
    """A ``before-sign`` handler that gives each request carrying a SHA-256 checksum the client
    configuration ``unsigned`` (the client's own, with ``payload_signing_enabled`` off)."""

    def handler(request: Any, **_kwargs: Any) -> None:
        if CHECKSUM_HEADER in request.headers:
            request.context["client_config"] = unsigned

    return handler
