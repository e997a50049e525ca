"""Data files and run folders: reading records with errors that name file and line,
and writing every output so that a crash never leaves a half-written one behind.

Records follow AlpacaFarm's format:
  demonstrations  {"instruction", "input", "output"}
  preferences     {"instruction", "input", "output_1", "output_2", "preference": 1 or 2}
  instructions    {"instruction", "input"}            (unlabelled and evaluation splits)
  policy samples  {"instruction", "input", "outputs": [n strings]}   (Step 4's set P)
Your own files (--sft-data etc.) may also use the prompt / chosen / rejected form; see
`user_record` for every accepted field.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

DEMO = {"instruction": str, "input": str, "output": str}
PREFERENCE = {"instruction": str, "input": str, "output_1": str, "output_2": str, "preference": int}
INSTRUCTION = {"instruction": str, "input": str}
SAMPLES = {"instruction": str, "input": str, "outputs": list}


class DataError(ValueError):
    """Bad input data; the message starts with `file:line:`."""


def where(record: dict) -> str:
    return record.get("_where", "<memory>")


def parse_records(path) -> list[tuple[str, dict]]:
    """(location, object) for every record of a JSONL file (one object per line) or a JSON
    file holding a list of objects; the location is "file:line" (JSONL) or "file: record N"
    (a JSON list has no line per record). Malformed JSON is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # one line naming the file and line, like every other bad record
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {column}); save the "
                        f"file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}:1: the file is empty")
    items: list[tuple[str, object]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        items = [(f"{path}: record {i + 1}", d) for i, d in enumerate(data)]
    else:
        # split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which
        # json.dumps(ensure_ascii=False) leaves unescaped inside strings
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                items.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
    for loc, rec in items:
        if not isinstance(rec, dict):
            raise DataError(f"{loc}: expected a JSON object, got {type(rec).__name__}")
    return items


def read_records(path, schema: dict, keep_where: bool = False) -> list[dict]:
    """Read a JSONL or JSON file (`parse_records`), check every record against `schema`
    ({field: type}) and tag it with `_where` ("file:line") so later errors (e.g. a prompt too
    long) can point back at it. keep_where: a record's own "where" field (written by the data
    stage, `write_records(..., where=True)`) names the user's file and line it came from."""
    out = []
    for loc, rec in parse_records(path):
        for field, typ in schema.items():
            if field not in rec:
                raise DataError(f"{loc}: missing field {field!r} (expected fields: {', '.join(schema)})")
            if not isinstance(rec[field], typ) or (typ is int and isinstance(rec[field], bool)):
                raise DataError(f"{loc}: field {field!r} should be {typ.__name__}, got {type(rec[field]).__name__}")
        if "preference" in schema and rec["preference"] not in (1, 2):
            raise DataError(f"{loc}: field 'preference' should be 1 or 2, got {rec['preference']!r}")
        if "outputs" in schema and (not rec["outputs"] or not all(isinstance(o, str) for o in rec["outputs"])):
            raise DataError(f"{loc}: field 'outputs' should be a non-empty list of strings")
        if keep_where and isinstance(rec.get("where"), str):
            loc = rec.pop("where")
        out.append({**rec, "_where": loc})
    return out


# ----------------------------------------------------------------------------- your own data files

# What --sft-data, --pref-data, --unlabeled-data and --eval-data accept, per record:
#   prompt       AlpacaFarm: "instruction" (+ optional "input")   or   "prompt"
#   sft          prompt + "output"                                 or   prompt + "chosen"
#   pref         prompt + "output_1", "output_2", "preference" (1 or 2: which output is better)
#                or prompt + "chosen", "rejected"
#   unlabeled    prompt (other fields are ignored)
#   eval         prompt + optional "output": the reference answer win-rates are measured against
USER_KINDS = ("sft", "pref", "unlabeled", "eval")


def _text(rec: dict, field: str, loc: str, optional: bool = False, empty_ok: bool = True):
    if field not in rec:
        if optional:
            return None
        raise DataError(f"{loc}: missing field {field!r}")
    value = rec[field]
    if not isinstance(value, str):
        raise DataError(f"{loc}: field {field!r} should be a string, got {type(value).__name__}")
    if not empty_ok and not value.strip():
        raise DataError(f"{loc}: field {field!r} is empty")
    return value


def user_record(rec: dict, kind: str, loc: str) -> dict:
    """One record of a user's data file -> our AlpacaFarm form ({"instruction", "input", ...}),
    or a DataError naming the file, line and field."""
    if ("instruction" in rec) == ("prompt" in rec):
        raise DataError(f"{loc}: expected either field 'instruction' (AlpacaFarm) or 'prompt', "
                        f"got {'both' if 'prompt' in rec else 'neither'} (fields: {', '.join(rec) or 'none'})")
    if "prompt" in rec:
        out = {"instruction": _text(rec, "prompt", loc, empty_ok=False), "input": ""}
    else:
        out = {"instruction": _text(rec, "instruction", loc, empty_ok=False),
               "input": _text(rec, "input", loc, optional=True) or ""}
    if kind == "sft":
        field = "output" if "output" in rec or "chosen" not in rec else "chosen"
        if field not in rec:
            raise DataError(f"{loc}: missing field 'output' (or 'chosen') with the demonstration")
        out["output"] = _text(rec, field, loc)
    elif kind == "pref":
        if "chosen" in rec or "rejected" in rec:
            out.update(output_1=_text(rec, "chosen", loc), output_2=_text(rec, "rejected", loc), preference=1)
        else:
            out.update(output_1=_text(rec, "output_1", loc), output_2=_text(rec, "output_2", loc))
            if "preference" not in rec:
                raise DataError(f"{loc}: missing field 'preference' (1 or 2), or use 'chosen' and 'rejected'")
            pref = rec["preference"]
            if isinstance(pref, bool) or pref not in (1, 2):
                raise DataError(f"{loc}: field 'preference' should be 1 or 2, got {pref!r}")
            out["preference"] = int(pref)
    elif kind == "eval":
        reference = _text(rec, "output", loc, optional=True)
        if reference is not None:
            out["output"] = reference
    elif kind != "unlabeled":
        raise ValueError(f"unknown data kind {kind!r}")
    return out


def read_user_records(path, kind: str) -> list[dict]:
    """A user's JSON/JSONL file of `kind` (USER_KINDS), every record checked and converted to
    our form, tagged with `_where` (its file and line)."""
    out = [{**user_record(rec, kind, loc), "_where": loc} for loc, rec in parse_records(path)]
    if kind == "eval" and 0 < sum("output" in r for r in out) < len(out):
        missing = next(r for r in out if "output" not in r)
        raise DataError(f"{missing['_where']}: missing field 'output': either every evaluation record has a "
                        f"reference output or none has")
    return out


def atomic_write_text(path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_records(path, records, where: bool = False) -> None:
    """JSONL, one record per line; private keys (`_where`, ...) are left out. where=True keeps
    `_where` as a "where" field, so that errors found in a later stage still name the user's
    file and line (`read_records(..., keep_where=True)`)."""
    lines = [json.dumps({**{k: v for k, v in r.items() if not k.startswith("_")},
                         **({"where": r["_where"]} if where and "_where" in r else {})}, ensure_ascii=False)
             for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def remove(path) -> None:
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ----------------------------------------------------------------------------- run folders

DONE = "DONE"


def is_complete(out_dir, stage: str) -> bool:
    return (Path(out_dir) / stage / DONE).is_file()


def require(out_dir, stage: str, hint: str | None = None) -> Path:
    """The folder of an earlier stage, or a clear error if it has not finished."""
    path = Path(out_dir) / stage
    if not is_complete(out_dir, stage):
        raise SystemExit(f"error: {path} is missing or incomplete; run `python train.py --stage "
                         f"{hint or stage} --out {out_dir}` first")
    return path


def finish_interrupted(out_dir, stage: str) -> None:
    """A process killed between the two renames at the end of `stage_output` leaves a complete
    `.STAGE.partial` (it has DONE) and no STAGE folder: finish the job."""
    final, partial = Path(out_dir) / stage, Path(out_dir) / f".{stage}.partial"
    if (partial / DONE).is_file() and not final.exists():
        os.replace(partial, final)
        remove(Path(out_dir) / f".{stage}.old")


@contextmanager
def run_lock(out_dir):
    """One run at a time in a run folder: an exclusive lock on DIR/.lock, which the OS releases
    however the process ends (SIGKILL included). Two runs writing the same stages would mix
    their outputs. (No lock on systems without fcntl, e.g. Windows.)"""
    try:
        import fcntl
    except ImportError:
        yield
        return
    f = open(Path(out_dir) / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown pid"
        f.close()
        raise SystemExit(f"error: another run is using {out_dir} ({holder}); wait for it to finish or stop it") \
            from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    try:
        yield
    finally:
        f.close()


@contextmanager
def stage_output(out_dir, stage: str, resume: bool = False, main: bool = True):
    """Build a stage's outputs in a hidden `.STAGE.partial` folder and move it into place
    only when everything, including the DONE marker, is written. A stage that fails or is
    killed leaves its previous complete output (if any) untouched and no half-written one.
    resume=True keeps what a killed attempt left in `.STAGE.partial` (PPO's checkpoints);
    otherwise the stage starts from an empty folder. Only the main process (rank 0) touches
    the folders; the others get the same path, to read from."""
    final = Path(out_dir) / stage
    partial = Path(out_dir) / f".{stage}.partial"
    if main:
        if not resume or (partial / DONE).exists():
            remove(partial)
        partial.mkdir(parents=True, exist_ok=True)
    yield partial
    if not main:
        return
    (partial / DONE).write_text("complete\n")
    old = Path(out_dir) / f".{stage}.old"
    remove(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    remove(old)


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
