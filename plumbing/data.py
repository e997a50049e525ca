"""Data files: reading records with errors that name file and line, and writing every output
so that a crash never leaves a half-written one behind.

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
