"""The provider as a service: the core (`ProviderParty`), its gRPC layer, and the stores behind them.

This room may use the Llamdex model (`provider_party.model`); the model never imports it.
"""
