"""The LLM provider: frozen base LLM, connector training from public schemas, multi-tenant inference."""
