"""TLS 1.3 only between the parties: set before gRPC loads, because gRPC reads its TLS settings when it loads.

gRPC's Python API cannot set a minimum TLS version (its core allows TLS 1.2 and 1.3), but its core
reads the TLS 1.2 cipher list from `GRPC_SSL_CIPHER_SUITES` once, when `grpc` is first imported. This
module sets that list to `TLS12_CIPHERS`, a single TLS 1.2 suite that needs a pre-shared key, which
gRPC never configures: a TLS 1.2 handshake finds no suite both sides can use and fails, while TLS 1.3
(whose suites BoringSSL keeps on whatever the list says) goes on. Both directions are covered: servers
and channels read the same list.

It runs when the `protocol` package is imported, and `client_party`, `provider_party` and `simulations`
import `protocol` first, so every program of the project sets it before any of its modules imports
`grpc`. A process that imported `grpc` earlier keeps gRPC's default; `EFFECTIVE` then is False and
`protocol.tls.add_port` says so in the log. `tests/test_security.py` checks it with real TLS 1.2 and
1.3 handshakes against both services, in-process and as the `llamdex ... serve` processes.
"""

from __future__ import annotations

import logging
import os
import sys

CIPHER_SUITES_VAR = "GRPC_SSL_CIPHER_SUITES"
TLS12_CIPHERS = "PSK-AES128-CBC-SHA"   # TLS 1.2 only with a pre-shared key, which gRPC never has: TLS 1.3 only

_previous = os.environ.get(CIPHER_SUITES_VAR)
os.environ[CIPHER_SUITES_VAR] = TLS12_CIPHERS
EFFECTIVE = "grpc" not in sys.modules or _previous == TLS12_CIPHERS   # gRPC reads the variable when it is first imported
if _previous and _previous != TLS12_CIPHERS:
    logging.getLogger(__name__).warning("%s=%r replaced by %r: the parties speak TLS 1.3 only", CIPHER_SUITES_VAR, _previous, TLS12_CIPHERS)

__all__ = ["CIPHER_SUITES_VAR", "EFFECTIVE", "TLS12_CIPHERS"]
