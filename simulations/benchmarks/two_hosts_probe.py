"""Runs on the client host of the two-host benchmark: times a provider's start as a client sees it.

It prepares first (imports, one held-out question of the client's last uploaded expert), prints `probe
ready`, then reads the provider's start time (Unix seconds, one line on standard input) and polls the
provider's health every `--interval` seconds: the time to liveness, the time to readiness, then one Ask
sent the moment readiness is SERVING (its latency is what the first user waits) and a second Ask of the
same question (the steady state). Prints one JSON object.

    python -m simulations.benchmarks.two_hosts_probe --config client.toml   # started by two_hosts_bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.two_hosts_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="the client's client.toml")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between health checks (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default: %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    from client_party.config import load_client_config
    from client_party.service import ClientParty
    from protocol.errors import CodedError
    from protocol.health_probe import check_health

    cfg = load_client_config(args.config)
    party = ClientParty(cfg)
    digest, info = party.latest()
    question = party.heldout_questions(info, 1)[0][0]
    pc = cfg.provider_client(with_store=False)
    print("probe ready", flush=True)
    t0 = float(sys.stdin.readline())
    out: dict = {"address": cfg.provider_address, "artifact_digest": digest}

    def poll(service: str | None) -> float:
        while time.time() - t0 < args.timeout:
            try:
                if check_health(cfg.provider_address, cfg.tls, service=service, server_name=cfg.server_name, timeout_s=2.0).serving:
                    return time.time() - t0
            except CodedError:
                pass
            time.sleep(args.interval)
        raise SystemExit(f"the provider did not report {'liveness' if service == '' else 'readiness'} within {args.timeout:g} s")

    out["live_s"] = poll("")
    out["ready_s"] = poll(None)
    for name in ("first_ask_s", "second_ask_s"):
        t = time.perf_counter()
        answer = pc.ask([question], artifact_digest=digest)[0]
        out[name] = time.perf_counter() - t
    out["answer"] = answer.answer
    pc.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
