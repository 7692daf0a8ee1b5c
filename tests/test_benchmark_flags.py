"""The benchmark modules run as `python -m simulations.benchmarks.NAME` (or `llamdex bench NAME -- ...`) name their
output folder `--out` like every `llamdex` verb; the old spelling (`--results-dir`, `--out-dir`) is hidden from --help
but still works, stores the same value and says the new name on standard error. Only the parsers are built: nothing runs."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from simulations.benchmarks.results_md import RESULTS_DIR

# module, its old flag, the default of --out (unchanged by the rename), and how its parser gets built
BENCHMARKS = [
    ("compare", "--results-dir", RESULTS_DIR, "parser"),
    ("lora_curve", "--results-dir", RESULTS_DIR, "main"),
    ("multi_tenant", "--results-dir", RESULTS_DIR, "parse_args"),
    ("simulation", "--results-dir", RESULTS_DIR, "parse_args"),
    ("two_hosts_bench", "--results-dir", Path("docs/results"), "main"),
    ("load_test", "--results-dir", None, "main"),
    ("fault_campaign", "--results-dir", None, "main"),
    ("fuzz_campaign", "--results-dir", None, "main"),
    ("protocol_bench", "--out-dir", Path("docs/results"), "main"),
]
OLD = ("--results-dir", "--out-dir")


class _Built(Exception):
    """Raised instead of parsing: the parser a module built is all this test needs."""


def built_parser(module_name: str, how: str, monkeypatch) -> argparse.ArgumentParser:
    """The module's own parser: from its parser function, or caught at the first parse_args of `main([])`/`parse_args([])`."""
    module = importlib.import_module(f"simulations.benchmarks.{module_name}")
    if how == "parser":
        return module.parser()
    caught: list[argparse.ArgumentParser] = []

    def catch(self, args=None, namespace=None):
        caught.append(self)
        raise _Built

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(_Built):
            getattr(module, how)([])
    return caught[0]


def visible_options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions if a.help is not argparse.SUPPRESS for s in a.option_strings}


@pytest.mark.parametrize("module_name, old, default, how", BENCHMARKS, ids=[b[0] for b in BENCHMARKS])
def test_the_output_folder_is_out_and_the_old_name_still_works(module_name, old, default, how, monkeypatch, capsys):
    p = built_parser(module_name, how, monkeypatch)
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
