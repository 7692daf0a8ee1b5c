"""The data owner's side of Llamdex: load and validate the private table, train and package the expert."""

import protocol  # noqa: E402,F401 - first: the TLS 1.3-only policy is set before any module of this package imports gRPC
