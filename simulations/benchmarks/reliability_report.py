"""docs/results/reliability.json and the `reliability` section of docs/RESULTS.md, from the three reliability runs.

Each run writes its own part and leaves the others as they are:

    python -m simulations.benchmarks.load_test          # "load":   32 uploaders + 64 askers for 5 min against one provider
    python -m simulations.benchmarks.fault_campaign     # "faults": kill -9 at >= 20 random points per scenario, restart, check
    python -m simulations.benchmarks.fuzz_campaign      # "fuzz":   thousands of hostile inputs per reader

`render()` turns the whole JSON into the Markdown tables of the section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulations.benchmarks.results_md import RESULTS_DIR, environment, results_md_path, update_section, write_json

NAME = "reliability.json"
SECTION = "reliability"


def merge_and_render(part: str, payload: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Stores `payload` as `part` of reliability.json (other parts kept) and rewrites the RESULTS.md section."""
    results_dir = Path(results_dir or RESULTS_DIR)
    path = results_dir / NAME
    data = json.loads(path.read_text()) if path.exists() else {}
    data[part] = {**payload, "environment": environment()}
    out = write_json(NAME, data, results_dir)
    update_section(SECTION, render(data), results_md_path(results_dir))
    return out


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{1000 * x:.0f} ms"


def render(data: dict[str, Any]) -> str:
    lines = ["## Reliability under load, crashes and hostile input (issue: reliability)", ""]
    load = data.get("load")
    if load:
        lines += [f"**Load** (`{load.get('command', '')}`): {load['uploaders']} uploading and {load['askers']} asking clients for "
                  f"{load['duration_s']:.0f} s against one provider process (mutual TLS, loopback, {load['environment']['cpu_count']} cores), "
                  f"admission control `max_concurrent_asks` = {load['limits']['max_concurrent_asks']}.", "",
                  "| call | calls ok | shed (back-pressure) | errors | p50 | p99 | throughput |", "|---|---|---|---|---|---|---|"]
        for name, c in load["calls"].items():
            lines.append(f"| {name} | {c['ok']} | {c.get('shed', 0)} | {c['errors']} | {_ms(c.get('p50_s'))} | {_ms(c.get('p99_s'))} | "
                         f"{c.get('per_s', 0):.2f}/s |")
        u = load["unloaded"]
        lines += ["", f"Unloaded Ask p50 {_ms(u['ask_p50_s'])} (target for loaded p99: ≤ 3× = {_ms(3 * u['ask_p50_s'])}); "
                  f"loaded Ask p99 of admitted calls {_ms(load['calls']['Ask']['p99_s'])} "
                  f"({load['ask_p99_over_unloaded_p50']:.2f}×); end to end with the clients' retries p99 "
                  f"{_ms(load['ask_end_to_end']['p99_s'])}. {load.get('verdict', '')}", ""]
        ask = load["calls"]["Ask"]
        if "server_p50_s" in ask:
            lines += [f"The provider's own time for an admitted Ask (`AskResponse.seconds`, the pass and its batching wait): p50 "
                      f"{_ms(ask['server_p50_s'])}, p99 {_ms(ask['server_p99_s'])}; the rest of the client's time is transport and "
                      "queueing in front of the handler.", ""]
        cpu = load.get("cpu_seconds")
        if cpu:
            lines += [f"CPU seconds during the load: provider {cpu['provider']:.0f}, load generator {cpu['load_generator']:.0f}, "
                      f"of {cpu['available']:.0f} available (all cores).", ""]
        lines += [f"Provider memory: peak RSS {load['memory']['peak_rss_mb']:.0f} MB, growth over the last minute "
                  f"{load['memory']['last_minute_growth_mb']:+.1f} MB. After the run: {load['checks']['accepted_uploads']} accepted uploads, "
                  f"{load['checks']['receipts_per_upload']}, receipts verify: {load['checks']['receipts_verify']}, ledger chain verifies: "
                  f"{load['checks']['ledger_verifies']}; lost: {load['checks']['lost']}.", ""]
    faults = data.get("faults")
    if faults:
        lines += [f"**Faults** (`{faults.get('command', '')}`): kill -9 at random points, restart, check the ledger, jobs, artifacts, "
                  "receipts and budgets.", "", "| scenario | faults injected | survived | lost |", "|---|---|---|---|"]
        for name, s in faults["scenarios"].items():
            lines.append(f"| {name} | {s['injected']} | {s['survived']} | {s['lost']} |")
        lines.append("")
    fuzz = data.get("fuzz")
    if fuzz:
        lines += [f"**Hostile input** (`{fuzz.get('command', '')}`): hypothesis, random and mutated inputs.", "",
                  "| target | cases | accepted | refused precisely | crashes | hangs | state changes | slowest case |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, t in fuzz["targets"].items():
            lines.append(f"| {name} | {t['cases']} | {t['accepted']} | {t['refused_precisely']} | {t['crashes']} | {t['hangs']} | "
                         f"{t['state_changes']} | {_ms(t['max_case_s'])} |")
        lines.append("")
        if fuzz.get("found_during_development"):
            lines += ["Found by the first runs of these targets and fixed (the counts above are of the fixed code):", ""]
            lines += [f"- {x}" for x in fuzz["found_during_development"]] + [""]
    return "\n".join(lines)


__all__ = ["merge_and_render", "render"]
