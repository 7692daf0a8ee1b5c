"""What both parties share: public schema, feature encoding, expert architecture, canonical JSON, errors.

`protocol` sits at the bottom of the dependency graph: it imports neither `client_party` nor
`provider_party`, so that each party can be deployed without the other's code.
"""

from protocol import tls_policy as _tls_policy  # noqa: E402,F401 - TLS 1.3 only: must run before gRPC is imported (see tls_policy)
