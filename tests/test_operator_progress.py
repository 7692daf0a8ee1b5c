"""Progress written to a file or a pipe is one line per update with its counts, never a carriage-return bar;
on a terminal it is tqdm's bar."""

from __future__ import annotations

import io

import numpy as np

from protocol.progress import LineProgress, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_one_line_per_update_with_the_counts():
    out = io.StringIO()
    bar = progress_bar(range(4), desc="expert", unit="epoch", file=out, min_interval_s=0.0)
    assert isinstance(bar, LineProgress)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.2f}")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [ln.rsplit(" ", 2)[0] for ln in lines] == ["expert: 1/4 epoch (loss=1.00)", "expert: 2/4 epoch (loss=0.50)",
                                                      "expert: 3/4 epoch (loss=0.33)", "expert: 4/4 epoch (loss=0.25)"]
    assert all(ln.endswith(" s") for ln in lines)


def test_a_fast_loop_is_paced_but_the_first_and_last_states_are_always_written():
    out = io.StringIO()
    with progress_bar(total=1000, desc="evaluate", unit="question", file=out, min_interval_s=3600) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert [ln.rsplit(" ", 2)[0] for ln in lines] == ["evaluate: 1/1000 question", "evaluate: 1000/1000 question"]


def test_a_job_followed_by_stage_writes_a_line_when_its_state_changes_and_none_when_it_repeats():
    out = io.StringIO()
    with progress_bar(total=100, desc="customize", unit="%", file=out, min_interval_s=0.0) as bar:
        for pct, stage in [(0, "queued"), (0, "queued"), (25, "encoder cache"), (25, "encoder cache"), (100, "done")]:
            bar.n = pct
            bar.set_postfix_str(stage, refresh=False)
            bar.refresh()
    assert [ln.rsplit(" ", 2)[0] for ln in out.getvalue().splitlines()] == [
        "customize: 0/100 % (queued)", "customize: 25/100 % (encoder cache)", "customize: 100/100 % (done)"]


def test_a_terminal_gets_tqdms_bar():
    from tqdm import tqdm

    bar = progress_bar(total=3, desc="x", file=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_expert_training_into_a_pipe_writes_plain_lines_per_epoch(capsys):
    from client_party.datasets import encode_table, load_table
    from client_party.expert_training import TrainConfig, train_expert

    df, schema = load_table("titanic")
    x, y = encode_table(df.iloc[:200], schema)
    train_expert(x, np.asarray(y), schema, TrainConfig(seed=0, epochs=3), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    epoch_lines = [ln for ln in err.splitlines() if ln.startswith("expert: ")]
    assert [ln.split(" (")[0] for ln in epoch_lines] == ["expert: 1/3 epoch", "expert: 2/3 epoch", "expert: 3/3 epoch"]
