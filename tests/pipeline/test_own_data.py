"""Your own model and data: every stage on a few records of each supported file format, with a
tiny random Llama (byte-level BPE tokenizer) saved to a temp folder as the --model; and the
data-file reader's conversions and errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import config
import train as pipeline
from run_helpers import GOLD_POLICY, POLICIES, train_here
from plumbing import data, runs
from plumbing import models
from tiny_models import prompt_corpus, save_tiny_bert, save_tiny_llama
import lm

ROOT = Path(__file__).resolve().parents[2]

QA = [("What is the capital of France?", "", "Paris is the capital of France.", "Lyon."),
      ("Name a primary colour.", "", "Red is a primary colour.", "Green, I think."),
      ("Add the numbers.", "2 and 3", "2 + 3 = 5.", "2 + 3 = 6."),
      ("Translate to French.", "cat", "chat", "chien"),
      ("Give a synonym.", "happy", "Glad.", "Sad."),
      ("What do bees make?", "", "Bees make honey.", "Bees make milk."),
      ("Spell the word backwards.", "stop", "pots", "tops"),
      ("Is the sun a star?", "", "Yes, the sun is a star.", "No."),
      ("Count the letters.", "tree", "4", "3"),
      ("Which is larger, 7 or 9?", "", "9 is larger.", "7 is larger.")]
TEXTS = [t for row in QA for t in row]

# a small run: every stage, a handful of steps; the tiny model is random, so nothing is learned
SMALL = ["--sft-steps", "3", "--sft-batch", "4", "--rm-batch", "4", "--rm-epochs", "1", "--rm-val-fraction", "0.2",
         "--ppo-iterations", "2", "--rollout-batch", "4", "--step-batch", "2", "--rlp-n", "3", "--uml-batch", "4",
         "--best-of-n", "2", "--max-response-len", "8", "--max-prompt-len", "200", "--quiet"]


def write_alpacafarm_jsonl(folder: Path) -> dict:
    """AlpacaFarm records, one JSON object per line; the eval file carries reference outputs."""
    rows = {
        "sft": [{"instruction": q, "input": i, "output": good} for q, i, good, _ in QA],
        "pref": [{"instruction": q, "input": i, "output_1": bad, "output_2": good, "preference": 2}
                 if k % 2 else {"instruction": q, "input": i, "output_1": good, "output_2": bad, "preference": 1}
                 for k, (q, i, good, bad) in enumerate(QA)],
        "unlabeled": [{"instruction": q, "input": i} for q, i, _, _ in QA],
        "eval": [{"instruction": q, "input": i, "output": good} for q, i, good, _ in QA[:6]],
    }
    paths = {}
    for name, recs in rows.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in recs))
    return paths


def write_prompt_chosen_rejected_json(folder: Path) -> dict:
    """The prompt / chosen / rejected form, as JSON lists; SFT on the chosen answers; the eval
    file has no reference, so an SFT sample is the reference."""
    prompt = lambda q, i: f"{q} {i}".strip()  # noqa: E731
    rows = {
        "sft": [{"prompt": prompt(q, i), "chosen": good} for q, i, good, _ in QA],
        "pref": [{"prompt": prompt(q, i), "chosen": good, "rejected": bad} for q, i, good, bad in QA],
        "unlabeled": [{"prompt": prompt(q, i)} for q, i, _, _ in QA],
        "eval": [{"prompt": prompt(q, i)} for q, i, _, _ in QA[:6]],
    }
    paths = {}
    for name, recs in rows.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(recs, indent=1))
    return paths


def train(out, args, check=True, here=None):
    """train.py on your-data settings; the calls that stop at an error or run only the data stage
    run in this process (run_helpers.train_here: no seconds of imports per call)."""
    if here if here is not None else (not check or args[-2:] == ["--stage", "data"]):
        return train_here(["--out", str(out), *SMALL, *args], check)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(out), *SMALL, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def data_args(paths: dict) -> list[str]:
    return ["--sft-data", str(paths["sft"]), "--pref-data", str(paths["pref"]),
            "--unlabeled-data", str(paths["unlabeled"]), "--eval-data", str(paths["eval"])]


STAGE_DIRS = [s.folder for s in pipeline.STAGES if not (s.builtin_only or s.control or s.round > 1)]  # no gold judge


def check_run(out: Path, style: str, judge: str, reference: str):
    for name in STAGE_DIRS:
        assert (out / name / "DONE").is_file(), name
    assert not (out / "ppo_gold").exists()  # no gold judge for your own data: the gold-reward PPO is skipped
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prompt_style"] == style  # resolved once and saved with the run
    # Step 1 used the file's labels: chosen first, as AlpacaFarm's preference field says
    prefs = [json.loads(line) for line in (out / "prefs" / "prefs.jsonl").read_text().splitlines()]
    assert len(prefs) == len(QA)
    for rec, (q, i, good, bad) in zip(prefs, QA):
        chosen = rec["output_1"] if rec["preference"] == 1 else rec["output_2"]
        assert chosen == good and rec["where"].split(":")[0].endswith(("pref.jsonl", "pref.json"))
    # the policy checkpoints load as plain transformers models and sample with the saved tokenizer
    tok = models.load_tokenizer(out / "rlp_ppo_spg" / "policy")
    assert tok.pad_token_id != tok.eos_token_id
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["judge"] == judge and results["reference"].startswith(reference)
    assert list(results["policies"]) == [p for p in POLICIES if p != GOLD_POLICY]  # no gold: no PPO on gold
    for r in results["policies"].values():
        assert 0.0 <= r["win_rate"] <= 100.0 and 0.0 <= r["ties"] <= 1.0
    outputs = [json.loads(line) for line in (out / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert len(outputs) == 6
    return results


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    words = " ".join(TEXTS).lower().replace(".", " ").replace(",", " ").replace("?", " ").split()
    return {"chat": save_tiny_llama(root / "chat", prompt_corpus(TEXTS), chat=True),
            "base": save_tiny_llama(root / "base", prompt_corpus(TEXTS), chat=False),
            "nli": save_tiny_bert(root / "nli", words, nli=True),
            "encoder": save_tiny_bert(root / "encoder", words, nli=False)}


def test_alpacafarm_jsonl_chat_model_lm_judge_embedding_clusters(tmp_path, tiny):
    paths = write_alpacafarm_jsonl(tmp_path)
    out = tmp_path / "run"
    train(out, ["--model", tiny["chat"], *data_args(paths), "--embedding-model", tiny["encoder"]])
    results = check_run(out, "chat", "lm", "the evaluation file's outputs")
    assert results["judge_name"].startswith("LM " + tiny["chat"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["spg_cluster"] == "embedding" and cfg["eval_judge"] == "lm"  # the defaults for your own data
    outputs = [json.loads(line) for line in (out / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert [o["reference"] for o in outputs] == [good for _, _, good, _ in QA[:6]]


def test_prompt_chosen_rejected_json_base_model_rm_judge_nli_clusters(tmp_path, tiny):
    paths = write_prompt_chosen_rejected_json(tmp_path)
    out = tmp_path / "run"
    train(out, ["--model", tiny["base"], *data_args(paths), "--spg-cluster", "nli", "--nli-model", tiny["nli"],
                "--eval-judge", "rm"])
    results = check_run(out, "alpaca", "rm", "one SFT sample")
    assert results["judge_name"] == f"reward model {out / 'reward'}"


def test_bad_record_stops_the_run_naming_file_line_and_field(tmp_path, tiny):
    paths = write_alpacafarm_jsonl(tmp_path)
    lines = paths["pref"].read_text().splitlines()
    lines[3] = json.dumps({"instruction": "Hi", "input": "", "output_1": "a", "output_2": "b", "preference": 3})
    paths["pref"].write_text("\n".join(lines) + "\n")
    proc = train(tmp_path / "run", ["--model", tiny["chat"], *data_args(paths)], check=False)
    assert proc.returncode != 0
    assert f"{paths['pref']}:4: field 'preference' should be 1 or 2, got 3" in proc.stderr
    assert not (tmp_path / "run" / "data").exists()  # nothing half-written


def test_a_file_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path, tiny):
    paths = write_alpacafarm_jsonl(tmp_path)
    raw = paths["sft"].read_bytes().split(b"\n")
    raw[1] = raw[1].replace(b"}", b', "note": "caf\xe9"}')  # Latin-1, as a spreadsheet export might write it
    paths["sft"].write_bytes(b"\n".join(raw))
    proc = train(tmp_path / "run", ["--model", tiny["chat"], *data_args(paths)], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {paths['sft']}:2: not UTF-8 text (byte 0xe9")
    assert not (tmp_path / "run" / "data").exists()  # nothing half-written


def test_prompt_too_long_names_the_users_file_and_line(tmp_path, tiny):
    paths = write_alpacafarm_jsonl(tmp_path)
    recs = [json.loads(line) for line in paths["unlabeled"].read_text().splitlines()]
    recs[6]["instruction"] = "tell me a very long story " * 40
    paths["unlabeled"].write_text("".join(json.dumps(r) + "\n" for r in recs))
    proc = train(tmp_path / "run", ["--model", tiny["chat"], *data_args(paths)], check=False)
    assert proc.returncode != 0
    assert f"{paths['unlabeled']}:7: prompt is" in proc.stderr and "--max-prompt-len 200" in proc.stderr


def test_a_model_that_cannot_be_loaded_is_one_clear_line(tmp_path):
    proc = train(tmp_path / "run", ["--model", str(tmp_path / "no-such-model")], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: --model {tmp_path / 'no-such-model'}: cannot load it")
    with pytest.raises(SystemExit, match="error: --nli-model x: cannot load it"):
        with models.loading("--nli-model", "x"):
            raise OSError("x is not a local folder")


def test_ppo_on_gold_is_an_error_with_your_own_data(tmp_path, tiny):
    paths = write_alpacafarm_jsonl(tmp_path)
    proc = train(tmp_path / "run", ["--model", tiny["chat"], *data_args(paths), "--stage", "ppo_gold"], check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: --stage ppo_gold needs")


def test_missing_data_files_and_builtin_model_are_clear_errors(tmp_path, tiny):
    paths = write_alpacafarm_jsonl(tmp_path)
    proc = train(tmp_path / "run", ["--model", tiny["chat"], "--sft-data", str(paths["sft"])], check=False)
    assert proc.returncode != 0 and "missing: --pref-data, --unlabeled-data, --eval-data" in proc.stderr
    proc = train(tmp_path / "run", data_args(paths), check=False)
    assert proc.returncode != 0 and "your own data needs --model" in proc.stderr


# ----------------------------------------------------------------------------- the reader, record by record

def write(tmp_path, rows, name="f.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_records_convert_both_forms_to_alpacafarm(tmp_path):
    sft = write(tmp_path, [{"instruction": "Q", "input": "x", "output": "A"}, {"prompt": "P", "chosen": "C"},
                           {"instruction": "Q2", "output": "B", "extra": 1}])
    assert [{k: v for k, v in r.items() if k != "_where"} for r in data.read_user_records(sft, "sft")] == [
        {"instruction": "Q", "input": "x", "output": "A"}, {"instruction": "P", "input": "", "output": "C"},
        {"instruction": "Q2", "input": "", "output": "B"}]
    pref = write(tmp_path, [{"prompt": "P", "chosen": "good", "rejected": "bad"},
                            {"instruction": "Q", "input": "", "output_1": "a", "output_2": "b", "preference": 2}])
    got = data.read_user_records(pref, "pref")
    assert [(r["output_1"], r["output_2"], r["preference"]) for r in got] == [("good", "bad", 1), ("a", "b", 2)]
    assert got[1]["_where"] == f"{pref}:2"


@pytest.mark.parametrize("kind,record,message", [
    ("sft", {"input": "x", "output": "A"}, "expected either field 'instruction' (AlpacaFarm) or 'prompt', got neither"),
    ("sft", {"instruction": "Q", "prompt": "P", "output": "A"}, "got both"),
    ("sft", {"instruction": "Q"}, "missing field 'output' (or 'chosen')"),
    ("sft", {"instruction": "  ", "output": "A"}, "field 'instruction' is empty"),
    ("sft", {"instruction": "Q", "input": 3, "output": "A"}, "field 'input' should be a string, got int"),
    ("pref", {"prompt": "P", "chosen": "a"}, "missing field 'rejected'"),
    ("pref", {"instruction": "Q", "output_1": "a", "output_2": "b"}, "missing field 'preference'"),
    ("pref", {"instruction": "Q", "output_1": "a", "output_2": "b", "preference": True}, "should be 1 or 2"),
    ("pref", {"instruction": "Q", "output_1": "a", "preference": 1}, "missing field 'output_2'"),
    ("eval", {"instruction": "Q", "output": None}, "field 'output' should be a string, got NoneType"),
])
def test_bad_user_records_name_file_line_and_field(tmp_path, kind, record, message):
    path = write(tmp_path, [{"prompt": "fine", "output": "x", "chosen": "x", "rejected": "y"}, record]
                 if kind != "pref" else [{"prompt": "fine", "chosen": "x", "rejected": "y"}, record])
    with pytest.raises(data.DataError) as e:
        data.read_user_records(path, kind)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


def test_eval_references_all_or_none(tmp_path):
    path = write(tmp_path, [{"prompt": "a", "output": "r"}, {"prompt": "b"}])
    with pytest.raises(data.DataError, match=r":2: missing field 'output'"):
        data.read_user_records(path, "eval")
    assert all("output" not in r for r in data.read_user_records(write(tmp_path, [{"prompt": "a"}]), "eval"))


def test_json_list_files_name_the_record(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": 5}]))
    with pytest.raises(data.DataError, match=r"f.json: record 2: field 'prompt' should be a string"):
        data.read_user_records(path, "unlabeled")


def test_where_survives_a_round_trip_through_our_files(tmp_path):
    recs = data.read_user_records(write(tmp_path, [{"prompt": "a"}, {"prompt": "b"}], "user.jsonl"), "unlabeled")
    data.write_records(tmp_path / "ours.jsonl", recs, where=True)
    back = data.read_records(tmp_path / "ours.jsonl", data.INSTRUCTION, keep_where=True)
    assert [r["_where"] for r in back] == [f"{tmp_path / 'user.jsonl'}:1", f"{tmp_path / 'user.jsonl'}:2"]
    plain = data.read_records(tmp_path / "ours.jsonl", data.INSTRUCTION)
    assert [r["_where"] for r in plain] == [f"{tmp_path / 'ours.jsonl'}:1", f"{tmp_path / 'ours.jsonl'}:2"]


# ----------------------------------------------------------------------------- settings

def test_embedding_threshold_default_is_the_measured_one():
    from extras import similarity
    assert config.make().rlp.embedding_threshold == similarity.DEFAULT_EMBEDDING_THRESHOLD


def test_defaults_follow_the_model_and_data():
    builtin = config.make()
    assert (builtin.model.prompt_style, builtin.model.max_prompt_len, builtin.model.max_response_len) == \
        ("compact", 32, 10)
    assert (builtin.rlp.spg_cluster, builtin.eval.eval_judge) == ("exact", "gold")
    real = config.make(model="some/model")
    assert (real.model.prompt_style, real.model.max_prompt_len, real.model.max_response_len) == \
        ("auto", 192, 300)  # AlpacaFarm
    with pytest.raises(SystemExit, match="--eval-judge gold knows only the built-in task"):
        config.make(model="m", sft_data="a", pref_data="b", unlabeled_data="c", eval_data="d", eval_judge="gold")


def test_prompt_style_resolves_from_the_tokenizer(tiny):
    for name, style in [("chat", "chat"), ("base", "alpaca")]:
        cfg = config.make(model=tiny[name])
        runs.resolve_prompt_style(cfg)
        assert cfg.model.prompt_style == style
    with pytest.raises(SystemExit, match="has no chat template"):
        runs.resolve_prompt_style(config.make(model=tiny["base"], prompt_style="chat"))


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    import torch
    grads = []
    for on in (False, True):
        model = models.gradient_checkpointing(models.load_policy(tiny["chat"], torch.device("cpu")), on)
        model.train()
        ids = torch.tensor([[5, 9, 13, 2, 7, 11]])
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    on = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else \
        "is_gradient_checkpointing"  # renamed in transformers 5.x
    assert getattr(model, on)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_subword_text_round_trip(tiny):
    """Stages hand answers to each other as text (files), re-encoded by the next stage; for a
    byte-level BPE that is lossless on the text (the ids may differ, the text does not)."""
    import torch
    tok = models.load_tokenizer(tiny["chat"])
    texts = ["Paris is the capital of France.", " leading space", "2 + 3 = 5.\nNext line", "émoji 🙂 ok"]
    ids = lm.encode_responses(tok, texts, 64)
    r_ids, r_mask = lm.right_pad(ids, tok.pad_token_id)
    assert lm.decode_responses(tok, r_ids, r_mask) == texts
    assert all(row[-1] == tok.eos_token_id for row in ids)
    assert torch.all(r_mask.sum(-1) == torch.tensor([len(row) for row in ids]))


# ----------------------------------------------------------------------------- BOS, EOS and the judges

def test_one_bos_in_chat_and_alpaca_prompts(tiny):
    """A chat template writes its own BOS and the tokenizer adds none; an Alpaca prompt gets the
    tokenizer's BOS; responses get none."""
    rec = [{"instruction": "What do bees make?", "input": ""}]
    for name, style in [("chat", "chat"), ("base", "alpaca")]:
        tok = models.load_tokenizer(tiny[name])
        [ids] = models.encode_prompts(tok, rec, style, 500)
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, name
        [resp] = lm.encode_responses(tok, ["Bees make honey."], 50)
        assert tok.bos_token_id not in resp and resp[-1] == tok.eos_token_id


def test_responses_end_with_the_templates_end_of_turn(tmp_path):
    """A tokenizer whose EOS is not the token its chat template ends answers with (as older
    Llama-3-Instruct: <|end_of_text|> vs <|eot_id|>): EOS becomes the end-of-turn token, and the
    pad token stays distinct from it."""
    from tiny_models import bpe_tokenizer, prompt_corpus
    tok = bpe_tokenizer(prompt_corpus(TEXTS), chat=True, eos="<|endoftext|>")
    assert models.chat_turn_end(tok) == "<|im_end|>"
    tok.save_pretrained(tmp_path)
    plain = models.load_tokenizer(tmp_path)
    assert plain.eos_token == "<|endoftext|>"
    chat = models.load_tokenizer(tmp_path, turn_end_eos=True)
    assert chat.eos_token == "<|im_end|>" and chat.pad_token_id not in (chat.eos_token_id, None)
    [resp] = lm.encode_responses(chat, ["Paris."], 20)
    assert resp[-1] == chat.convert_tokens_to_ids("<|im_end|>")
    base = bpe_tokenizer(prompt_corpus(TEXTS), chat=False)
    assert models.chat_turn_end(base) is None and models.use_turn_end_as_eos(base) is None  # no template


def judge_cfg(**kw):
    return config.make(model="m", sft_data="a", pref_data="b", unlabeled_data="c", eval_data="d", **kw)


def test_lm_judge_wins_go_to_the_policy(monkeypatch):
    """The judge is asked (policy answer, reference) and 1 means the policy's answer won: a stub
    judge that prefers the longer answer gives the long-answer policy 100% and the short one 0%."""
    from extras import evaluate
    from extras import judge
    calls = []

    def longer_wins(model, tok, records, first, second, batch_size):
        calls.append((list(first), list(second)))
        return [1 if len(a) > len(b) else 2 if len(b) > len(a) else 0 for a, b in zip(first, second)]
    monkeypatch.setattr(models, "load_pretrained", lambda name, device: (None, None))
    monkeypatch.setattr(judge, "judge_pairs", longer_wins)
    recs = [{"instruction": "q", "input": ""}] * 3
    reference = ["medium", "medium", "medium"]
    name, wins = evaluate.judge_outputs(Path("."), recs, None, None, judge_cfg(), None,
                                        {"long": ["a long answer"] * 3, "short": ["s"] * 3,
                                         "mixed": ["a long answer", "s", "mediu!"]}, reference)
    assert wins == {"long": [1.0] * 3, "short": [0.0] * 3, "mixed": [1.0, 0.0, 0.5]}
    assert all(second == reference for _, second in calls)  # the reference is always the second answer
    assert evaluate.win_stats(wins["mixed"])["ties"] == pytest.approx(1 / 3)


def test_rm_judge_wins_go_to_the_higher_score(monkeypatch):
    from extras import evaluate
    import torch
    monkeypatch.setattr(models, "load_scorer", lambda path, device: None)
    monkeypatch.setattr(evaluate, "score_texts", lambda rm, tok, prompts, texts, max_len, batch:
                        torch.tensor([float(len(t)) for t in texts]))
    recs = [{"instruction": "q", "input": ""}] * 2
    name, wins = evaluate.judge_outputs(Path("run"), recs, [[1], [1]], None, judge_cfg(eval_judge="rm"), None,
                                        {"A": ["longer", "x"], "B": ["abc", "abc"]}, ["abc", "abc"])
    assert name == "reward model run/reward"
    assert wins == {"A": [1.0, 0.0], "B": [0.5, 0.5]}


# ----------------------------------------------------------------------------- run folders and your files

def test_a_changed_data_file_is_not_silently_reused(tmp_path, tiny):
    paths = write_alpacafarm_jsonl(tmp_path)
    out = tmp_path / "run"
    args = ["--model", tiny["chat"], *data_args(paths), "--embedding-model", tiny["encoder"], "--stage", "data"]
    train(out, args)  # in one process, as a notebook would: the second call must see the change
    first = (out / "data" / "sft.jsonl").read_text()
    recs = [json.loads(line) for line in paths["sft"].read_text().splitlines()]
    recs[0]["output"] = "Paris, of course."
    paths["sft"].write_text("".join(json.dumps(r) + "\n" for r in recs))
    proc = train(out, args, check=False)  # same paths, new contents: refused
    assert proc.returncode != 0 and f"data file contents changed since the run was made: {paths['sft']}" in proc.stderr
    train(out, args + ["--force"], here=True)  # --force redoes the data stage from the new file
    assert (out / "data" / "sft.jsonl").read_text() != first
    assert "Paris, of course." in (out / "data" / "sft.jsonl").read_text()
    sources = json.loads((out / "data" / "sources.json").read_text())
    assert sources["sft"]["path"] == str(paths["sft"]) and len(sources["sft"]["sha256"]) == 64


def test_models_of_later_stages_are_checked_before_the_first(tmp_path, tiny):
    paths = write_alpacafarm_jsonl(tmp_path)
    proc = train(tmp_path / "run", ["--model", tiny["chat"], *data_args(paths), "--spg-cluster", "nli",
                                    "--nli-model", str(tmp_path / "no-nli")], check=False)
    assert proc.returncode != 0 and f"error: --nli-model {tmp_path / 'no-nli'}: cannot load it" in proc.stderr
    assert not (tmp_path / "run" / "data").exists()  # before any stage ran
    proc = train(tmp_path / "run2", ["--model", tiny["chat"], *data_args(paths), "--eval-judge", "rm",
                                     "--judge-model", tiny["chat"]], check=False)  # a causal LM is no RM
    assert proc.returncode != 0 and "not a reward model" in proc.stderr
