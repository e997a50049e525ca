"""Logs: metrics.jsonl (one JSON object per line, flushed, cut back on resume) and, with
--tensorboard, the same numbers as TensorBoard scalars.
"""
from __future__ import annotations

import json
from pathlib import Path

from plumbing.data import remove


TENSORBOARD = "tensorboard==2.21.0"  # optional (--tensorboard); the version requirements-dev.txt pins


def summary_writer_class():
    """torch.utils.tensorboard's SummaryWriter, or a one-line error naming the package (torch
    ships the writer, the optional `tensorboard` package its file format)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SystemExit(f"error: --tensorboard needs the tensorboard package: pip install {TENSORBOARD}") from None
    return SummaryWriter


def tensorboard_writer(folder, fresh: bool = True):
    """A SummaryWriter on `folder` (one TensorBoard run per stage). fresh: drop what an earlier
    attempt of the stage wrote there (a resumed PPO stage keeps it: `Metrics.truncate` purges
    what came after its checkpoint). A new run starts with a session-start marker at step 0:
    TensorBoard's own reader takes the first marker of a run as its start and only later ones
    as restarts (`Metrics.purge_tensorboard`)."""
    summary_writer = summary_writer_class()
    if fresh:
        remove(folder)
    new = not any(Path(folder).glob("events.out.tfevents.*"))
    writer = summary_writer(log_dir=str(folder))
    if new:
        session_start(writer, 0)
    return writer


def session_start(writer, step: int) -> None:
    """TensorBoard's restart marker (a SessionLog START event, as SummaryWriter(purge_step=)
    writes): after the first one of a run, readers drop every event at or after `step`."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    writer.file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
    writer.flush()


def row_step(row: dict, last: int = 0) -> int:
    """The x of a logged row: its PPO iteration or its optimizer step; a summary row without
    either (stage_seconds, final statistics) belongs to the last step logged before it."""
    return int(row.get("iteration", row.get("step", last)))


class Metrics:
    """Appends one JSON object per line to metrics.jsonl (flushed, so a crash keeps the log).
    Metrics(None) logs nothing: what the processes other than rank 0 get. With `tensorboard`
    (a SummaryWriter, --tensorboard) every number of every row is also a TensorBoard scalar
    under its key, at the row's step (`row_step`); the writer's owner closes it."""

    def __init__(self, path, tensorboard=None):
        self.path = Path(path) if path is not None else None
        self.f = None
        self.tensorboard = tensorboard if self.path is not None else None
        self.last_step = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a", encoding="utf-8")

    def log(self, **row) -> None:
        if self.f is None:
            return
        clean = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
        self.f.write(json.dumps(clean) + "\n")
        self.f.flush()
        self.last_step = row_step(clean, self.last_step)
        if self.tensorboard is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("iteration", "step"):
                    self.tensorboard.add_scalar(key, value, self.last_step)
            self.tensorboard.flush()

    def log_rows(self, rows: list[dict], tag: str) -> None:
        """Several rows at once, one line each (a table: PPO's sample rollouts); TensorBoard gets
        them as one markdown table of text under `tag`, at the first row's step."""
        if self.f is None or not rows:
            return
        clean = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
        self.f.write("".join(json.dumps(row) + "\n" for row in clean))
        self.f.flush()
        self.last_step = row_step(clean[0], self.last_step)
        if self.tensorboard is not None:
            self.tensorboard.add_text(tag, markdown_table(clean), self.last_step)
            self.tensorboard.flush()

    def size(self) -> int:
        """Bytes written so far (saved in checkpoints, to cut the log back on resume)."""
        return self.f.tell() if self.f is not None else 0

    def truncate(self, size: int) -> None:
        if self.f is not None:
            self.f.flush()
            cut = self.path.stat().st_size > size
            self.f.truncate(size)
            self.f.seek(size)
            if cut and self.tensorboard is not None:  # hide what TensorBoard got of the rows cut
                self.purge_tensorboard()

    def purge_tensorboard(self) -> None:
        """A restart marker (`session_start`) at the step after the last row kept in the file:
        TensorBoard drops what the rows cut had sent, so a resumed PPO stage shows each
        iteration once."""
        step = 0
        for line in self.path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                row = json.loads(line)
                if "iteration" in row or "step" in row:
                    step = row_step(row) + 1
        self.last_step = step
        session_start(self.tensorboard, step)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tensorboard is not None:
            self.tensorboard.flush()


def markdown_table(rows: list[dict]) -> str:
    """Rows as a markdown table (the keys of the first row as columns); `|` and line breaks in
    the cells are escaped, so that any text fits in its cell."""
    keys = list(rows[0])
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]) + "\n"
