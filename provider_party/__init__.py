"""The LLM provider: frozen base LLM, connector training from public schemas, multi-tenant inference."""

import protocol  # noqa: E402,F401 - first: the TLS 1.3-only policy is set before any module of this package imports gRPC
