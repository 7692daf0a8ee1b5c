"""The provider's orchestrator as a Flower `ServerApp` (flwr 1.42 Message API): `@app.main()` over a `Grid`.

Everything it does is in `orchestrator.ProviderOrchestrator`; the report lands in `<out-dir>/report.json`.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from simulations.flower.orchestrator import ProviderOrchestrator

    ProviderOrchestrator(grid, context).run()


__all__ = ["app"]
