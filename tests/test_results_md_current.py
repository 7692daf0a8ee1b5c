"""docs/RESULTS.md's generated sections are exactly what their writers render from docs/results, so the
next benchmark run erases nothing written by hand and no section lags behind its writer's layout
(rebuild them with `python -m simulations.benchmarks.rebuild_results`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from simulations.benchmarks.rebuild_results import WRITERS, check, main, rebuild, sections

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
RESULTS_DIR = ROOT / "docs" / "results"


def test_every_generated_section_is_what_its_writer_renders():
    stale = check(RESULTS_MD, RESULTS_DIR)
    assert stale == [], "\n\n".join(f"{s.section}: {s.reason}" for s in stale) + \
        "\n\nrun `python -m simulations.benchmarks.rebuild_results`, and keep hand-written text outside the markers"


def test_every_section_has_a_writer():
    assert set(sections(RESULTS_MD.read_text())) <= set(WRITERS)


def _copy(tmp_path: Path) -> Path:
    md = tmp_path / "RESULTS.md"
    shutil.copy(RESULTS_MD, md)
    return md


def test_a_hand_edit_inside_markers_is_caught_and_rebuild_removes_it(tmp_path):
    md = _copy(tmp_path)
    edited = md.read_text().replace("<!-- END inference -->", "A hand-written remark.\n<!-- END inference -->", 1)
    md.write_text(edited)
    stale = check(md, RESULTS_DIR)
    assert [s.section for s in stale] == ["inference"]
    assert "-A hand-written remark." in stale[0].reason
    assert main(["--check", "--results", str(md), "--results-dir", str(RESULTS_DIR)]) == 1
    assert rebuild(md, RESULTS_DIR) == ["inference"]
    assert md.read_text() == RESULTS_MD.read_text()


def test_text_outside_markers_is_kept(tmp_path):
    md = _copy(tmp_path)
    md.write_text(md.read_text() + "\n## Notes by hand\n\nKept.\n")
    assert check(md, RESULTS_DIR) == []
    assert rebuild(md, RESULTS_DIR) == []
    assert md.read_text().endswith("Kept.\n")


def test_an_unregistered_section_and_a_missing_json_are_named(tmp_path):
    md = _copy(tmp_path)
    md.write_text(md.read_text() + "\n<!-- BEGIN my_notes -->\nby hand\n<!-- END my_notes -->\n")
    results = tmp_path / "results"
    shutil.copytree(RESULTS_DIR, results)
    (results / "lora_curve.json").unlink()
    stale = {s.section: s.reason for s in check(md, results)}
    assert set(stale) == {"my_notes", "lora_curve"}
    assert stale["my_notes"].startswith("unregistered")
    assert stale["lora_curve"].startswith("unreadable: FileNotFoundError")
    before = md.read_text()
    assert rebuild(md, results) == []   # neither can be rendered, so neither is touched
    assert md.read_text() == before
