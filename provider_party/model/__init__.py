"""The Llamdex model: base LLM, prompts, synthesis from schema, connectors, their training and store, one-pass serving.

Nothing here knows about gRPC, clients or ledgers (`provider_party.service` builds on it).
"""
