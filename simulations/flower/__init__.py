"""Many clients, one base LLM: the Llamdex parties as a Flower app (flwr 1.42 Message API).

`server_app.app` is the provider's orchestrator (`ServerApp`, `@app.main()` over a `Grid`); it holds
one `provider_party.service.core.ProviderParty`, so every upload goes through the same verification,
ε recomputation, ledger and signed receipt as the gRPC service. `client_app.app` is a client party
(`ClientApp`, `@app.train()` / `@app.query()` handlers): each simulated client owns a partition of a
table (or its own table and schema), its own ECDSA P-256 key, and its receipts.

Modules: `scenario` (the run config, validated), `partitioning` (IID / Dirichlet non-IID splits),
`simulated_client` (one data owner's work), `upload_stream` (the signed upload as Flower message
content), `orchestrator` (the provider's phases), `federated` (DP-FedAvg experts), `report`,
`progress` (phase progress lines), `launcher` (`flwr run` on the simulation engine, offline, leaving no
process behind) and `deployment` (`flower-superlink` + one `flower-supernode` per client).
"""
