"""`llamdex provider ...`: the LLM provider's commands."""

from __future__ import annotations

import argparse

from simulations.cli.common import add_connectors_arg, non_negative_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("provider", help="LLM provider: serve the protocol; train connectors for a public schema", description=__doc__)
    psub = p.add_subparsers(dest="provider_command", metavar="ACTION")
    c = psub.add_parser(
        "connectors",
        help="train (or reuse) the connectors for a schema from synthetic data only",
        description="Train the expert encoder and decoder for one (base LLM, schema) pair. Only the public "
        "schema is read; connectors are stored under $LLAMDEX_HOME/connectors and reused by every client with that schema.",
        epilog="examples:\n  llamdex provider connectors --schema client_party/schemas/titanic.json --preset quick\n"
        "  llamdex provider connectors --schema penguins --connectors state/connectors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--schema", required=True, help="schema JSON path or a registered dataset name")
    c.add_argument("--base-model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct, offline) or a HF model name/path")
    c.add_argument("--preset", choices=["default", "quick"], default="default", help="training sizes: default (benchmarks) or quick (demos, tests)")
    c.add_argument("--quick", dest="preset", action="store_const", const="quick", help="same as --preset quick")
    add_connectors_arg(c, help="connector store (default $LLAMDEX_HOME/connectors)", aliases=("--store",))
    c.add_argument("--retrain", action="store_true", help="train even if connectors for this schema exist")
    c.add_argument("--seed", type=non_negative_int, default=0, help="seed of the synthetic questions and the connectors' initial weights (default: %(default)s)")
    c.set_defaults(func=_connectors)
    from simulations.cli.provider_serve import register_serve

    register_serve(psub)
    p.set_defaults(func=lambda a: p.print_help() or 2)


def _connectors(args: argparse.Namespace) -> int:
    import json

    from client_party.datasets import load_schema  # schema parsing only; no client data is read
    from provider_party.model.base_llm import load_base_llm
    from provider_party.model.connector_store import ConnectorStore

    schema = load_schema(args.schema)
    store = ConnectorStore(args.connectors)
    store.check_writable()
    base = load_base_llm(args.base_model)
    why = None if args.retrain else store.unusable(base, schema)
    if why is not None:
        print(f"training connectors: {why}")
    model, trained = store.get_or_train(base, schema, args.preset, seed=args.seed, retrain=args.retrain)
    print(f"connectors {'trained' if trained else 'reused'}: {store.path_for(base.model_id, schema.digest)}")
    print(json.dumps(model.config.metrics, indent=2))
    return 0
