"""The benchmark modules run as `python -m simulations.benchmarks.NAME` (or `llamdex bench NAME -- ...`) name their
output folder `--out` like every `llamdex` verb; the old spelling (`--results-dir`, `--out-dir`) is hidden from --help
but still works, stores the same value and says the new name on standard error. Every benchmark builds its parser in
`parser()`, whose --help names the command to type and explains each option. Only the parsers are built: nothing runs."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from simulations import benchmarks
from simulations.benchmarks.results_md import RESULTS_DIR

# module, its old flag, and the default of --out (unchanged by the rename)
BENCHMARKS = [
    ("compare", "--results-dir", RESULTS_DIR),
    ("lora_curve", "--results-dir", RESULTS_DIR),
    ("multi_tenant", "--results-dir", RESULTS_DIR),
    ("simulation", "--results-dir", RESULTS_DIR),
    ("two_hosts_bench", "--results-dir", Path("docs/results")),
    ("load_test", "--results-dir", None),
    ("fault_campaign", "--results-dir", None),
    ("fuzz_campaign", "--results-dir", None),
    ("protocol_bench", "--out-dir", Path("docs/results")),
]
OLD = ("--results-dir", "--out-dir")


def runnable_modules() -> list[str]:
    """Every module of simulations/benchmarks that runs as `python -m simulations.benchmarks.NAME`."""
    folder = Path(benchmarks.__file__).parent
    return sorted(p.stem for p in folder.glob("*.py") if "\ndef main(" in p.read_text())


def built_parser(module_name: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"simulations.benchmarks.{module_name}").parser()


def visible_options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions if a.help is not argparse.SUPPRESS for s in a.option_strings}


@pytest.mark.parametrize("module_name, old, default", BENCHMARKS, ids=[b[0] for b in BENCHMARKS])
def test_the_output_folder_is_out_and_the_old_name_still_works(module_name, old, default, capsys):
    p = built_parser(module_name)
    shown = visible_options(p)
    assert "--out" in shown and not shown & set(OLD), f"{module_name} --help shows {sorted(shown & {'--out', *OLD})}"
    text = p.format_help()
    assert re.search(r"--out(?![\w-])", text)
    assert not [o for o in OLD if o in text], f"{module_name} --help (description or examples) still says {[o for o in OLD if o in text]}"
    assert p.parse_args([]).out == default

    new = p.parse_args(["--out", "some/folder"])
    assert capsys.readouterr().err == ""
    aliased = p.parse_args([old, "some/folder"])
    assert aliased.out == new.out == Path("some/folder")
    assert not hasattr(aliased, old.lstrip("-").replace("-", "_"))
    assert f"{old} is now --out" in capsys.readouterr().err


@pytest.mark.parametrize("module_name", runnable_modules())
def test_every_benchmark_builds_its_parser_alone_and_its_help_teaches(module_name):
    """`parser()` builds the options without running anything, so that --help, the docs check and this test read the
    same parser; the usage line names the command a reader types, and every option says what it is for."""
    p = built_parser(module_name)
    expected = "llamdex bench compare" if module_name == "compare" else f"python -m simulations.benchmarks.{module_name}"
    assert p.prog == expected
    text = p.format_help()  # a stray '%' in a help string fails here, not in front of a user
    assert text.startswith(f"usage: {expected}")
    silent = sorted((a.option_strings or [a.dest])[0] for a in p._actions if a.help is None)
    assert not silent, f"{module_name}: options without a help text: {silent}"
