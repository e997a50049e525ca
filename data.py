"""Data files and run folders: reading records with errors that name file and line,
and writing every output so that a crash never leaves a half-written one behind.

Records follow AlpacaFarm's format:
  demonstrations  {"instruction", "input", "output"}
  preferences     {"instruction", "input", "output_1", "output_2", "preference": 1 or 2}
  instructions    {"instruction", "input"}            (unlabelled and evaluation splits)
  policy samples  {"instruction", "input", "outputs": [n strings]}   (Step 4's set P)
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


def read_records(path, schema: dict) -> list[dict]:
    """Read a JSONL file (one object per line) or a JSON file holding a list of objects,
    check every record against `schema` ({field: type}) and tag it with `_where`
    ("file:line") so later errors (e.g. a prompt too long) can point back at it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path}:1: the file is empty")
    items: list[tuple[int, object]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        # a JSON list has no line per record; we point at the record's index instead
        items = [(i + 1, d) for i, d in enumerate(data)]
        unit = "record"
    else:
        # split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which
        # json.dumps(ensure_ascii=False) leaves unescaped inside strings
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                items.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
        unit = None
    out = []
    for n, rec in items:
        loc = f"{path}:{n}" if unit is None else f"{path}: record {n}"
        if not isinstance(rec, dict):
            raise DataError(f"{loc}: expected a JSON object, got {type(rec).__name__}")
        for field, typ in schema.items():
            if field not in rec:
                raise DataError(f"{loc}: missing field {field!r} (expected fields: {', '.join(schema)})")
            if not isinstance(rec[field], typ) or (typ is int and isinstance(rec[field], bool)):
                raise DataError(f"{loc}: field {field!r} should be {typ.__name__}, got {type(rec[field]).__name__}")
        if "preference" in schema and rec["preference"] not in (1, 2):
            raise DataError(f"{loc}: field 'preference' should be 1 or 2, got {rec['preference']!r}")
        if "outputs" in schema and (not rec["outputs"] or not all(isinstance(o, str) for o in rec["outputs"])):
            raise DataError(f"{loc}: field 'outputs' should be a non-empty list of strings")
        out.append({**rec, "_where": loc})
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


def write_records(path, records) -> None:
    """JSONL, one record per line; private keys (`_where`, ...) are left out."""
    lines = [json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, ensure_ascii=False) for r in records]
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


class Metrics:
    """Appends one JSON object per line to metrics.jsonl (flushed, so a crash keeps the log).
    Metrics(None) logs nothing: what the processes other than rank 0 get."""

    def __init__(self, path):
        self.path = Path(path) if path is not None else None
        self.f = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a", encoding="utf-8")

    def log(self, **row) -> None:
        if self.f is None:
            return
        clean = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
        self.f.write(json.dumps(clean) + "\n")
        self.f.flush()

    def size(self) -> int:
        """Bytes written so far (saved in checkpoints, to cut the log back on resume)."""
        return self.f.tell() if self.f is not None else 0

    def truncate(self, size: int) -> None:
        if self.f is not None:
            self.f.flush()
            self.f.truncate(size)
            self.f.seek(size)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
