"""Rebuilds the generated sections of docs/RESULTS.md from the JSON stored under docs/results.

Each benchmark rewrites its own section (`<!-- BEGIN name -->` ... `<!-- END name -->`) when it runs,
and everything between the two markers is replaced. So text written by hand inside a marker pair is
erased by the next run, and a writer whose layout changed leaves its section in the old one until the
benchmark is rerun (hours, for some). This module renders every section from its stored JSON without
rerunning anything:

    python -m simulations.benchmarks.rebuild_results            # rewrite every generated section
    python -m simulations.benchmarks.rebuild_results --check    # list the sections that differ; exit 1 if any

`--check` runs in the default tests, so a hand edit inside markers, or a section left behind by its
writer, fails there instead of vanishing later. Hand-written analysis belongs outside every marker pair.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.benchmarks.results_md import RESULTS_DIR, RESULTS_MD, update_section

MARKER = re.compile(r"<!-- BEGIN ([^ ]+) -->")


def _load(results_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((results_dir / name).read_text())


def _plain(module: str, file: str, writer: str = "markdown") -> Callable[[Path], str]:
    """A section that is `module.writer(<file's JSON>)`, as most benchmarks write theirs."""
    def render(d: Path) -> str:
        return getattr(importlib.import_module(module), writer)(_load(d, file))
    return render


def _protocol(d: Path) -> str:
    from simulations.benchmarks.protocol_bench import SECTION_TITLE, markdown
    return SECTION_TITLE + markdown(_load(d, "protocol.json"))


def _multi_tenant(d: Path) -> str:
    from simulations.benchmarks.multi_tenant import markdown
    data = _load(d, "simulation.json")
    return markdown(data["multi_tenant"], data["multi_tenant_run"])


def _reliability(d: Path) -> str:
    from simulations.benchmarks.reliability_report import NAME, render
    return render(_load(d, NAME))


def _compare(d: Path) -> str:
    from simulations.baselines.report import markdown
    data = _load(d, "compare.json")
    plotted = [ds for ds in data.get("curve_datasets", []) if (d / f"compare_epsilon_{ds}.png").is_file()]
    return markdown(data, plotted)


_B = "simulations.benchmarks."
# Section name → what its benchmark writes there, from the stored JSON. A benchmark that writes a new
# section (reader_ablation's `--name`) is added here, or --check reports the section as unregistered.
WRITERS: dict[str, Callable[[Path], str]] = {
    "accuracy": _plain(_B + "accuracy", "accuracy.json"), "inference": _plain(_B + "inference", "inference.json"),
    "protocol": _protocol, "two-hosts": _plain(_B + "two_hosts_bench", "two_hosts.json"),
    "simulation": _plain(_B + "simulation", "simulation.json"), "multi_tenant": _multi_tenant,
    "lora_curve": _plain(_B + "lora_curve", "lora_curve.json"), "reliability": _reliability,
    "dp-experts": _plain(_B + "dp_recipe", "dp_experts.json"),
    "dp-encoding": _plain(_B + "dp_recipe", "dp_encoding.json", "encoding_markdown"),
    "dp-headroom": _plain(_B + "dp_recipe", "dp_headroom.json", "headroom_markdown"),
    "attacks": _plain("simulations.attacks.report", "attacks.json"), "compare": _compare,
    "reader_ablation": _plain(_B + "reader_ablation", "reader_ablation.json"),
    "reader_layers": _plain(_B + "reader_ablation", "reader_layers.json"),
}


@dataclass(frozen=True)
class Stale:
    section: str
    reason: str                # "unregistered: ...", "unreadable: ...", or a unified diff (stored → rebuilt)
    rebuilt: str | None = None  # what the writer renders; None when it cannot render the section


def sections(text: str) -> list[str]:
    return MARKER.findall(text)


def current(text: str, section: str) -> str:
    return text.split(f"<!-- BEGIN {section} -->", 1)[1].split(f"<!-- END {section} -->", 1)[0].strip()


def check(md_path: Path = RESULTS_MD, results_dir: Path = RESULTS_DIR) -> list[Stale]:
    """Every marker pair in `md_path` whose text is not what its writer renders from `results_dir`."""
    text = md_path.read_text()
    out = []
    for section in sections(text):
        writer = WRITERS.get(section)
        if writer is None:
            out.append(Stale(section, "unregistered: no writer renders this section, so its text is hand-written; "
                                      "move it outside the markers, or register its writer in rebuild_results.WRITERS"))
            continue
        try:
            rebuilt = writer(results_dir).strip()
        except (OSError, KeyError, ValueError) as e:
            out.append(Stale(section, f"unreadable: {type(e).__name__}: {e}"))
            continue
        stored = current(text, section)
        if rebuilt != stored:
            diff = difflib.unified_diff(stored.splitlines(), rebuilt.splitlines(), "RESULTS.md", "rebuilt", lineterm="", n=0)
            out.append(Stale(section, "\n".join(diff), rebuilt))
    return out


def _write(stale: list[Stale], md_path: Path) -> list[str]:
    """Writes the sections a writer could render; returns their names."""
    written = [s for s in stale if s.rebuilt is not None]
    for s in written:
        update_section(s.section, s.rebuilt, md_path)
    return [s.section for s in written]


def rebuild(md_path: Path = RESULTS_MD, results_dir: Path = RESULTS_DIR) -> list[str]:
    """Rewrites every registered section from its JSON; returns the sections whose text changed."""
    return _write(check(md_path, results_dir), md_path)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.rebuild_results", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; list the sections that differ and exit 1 if any")
    ap.add_argument("--results", type=Path, default=RESULTS_MD, help="the Markdown file (default: %(default)s)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="the stored JSON (default: %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stale = check(args.results, args.results_dir)
    if args.check:
        for s in stale:
            print(f"== {s.section}\n{s.reason}\n")
        print(f"{len(stale)} section(s) differ from what their writers render" if stale else "every generated section is current")
        return 1 if stale else 0
    changed = _write(stale, args.results)
    left = [s for s in stale if s.rebuilt is None]
    print(f"rewrote {', '.join(changed) or 'nothing'}" + "".join(f"\nleft alone: {s.section} ({s.reason.splitlines()[0]})" for s in left))
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
