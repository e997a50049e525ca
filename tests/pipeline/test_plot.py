"""Watching reward hacking: the figures and hacks.md of extras/plot.py (drawn from hand-made run files,
so every plotted number can be checked against its file), PPO's sample table (fixed prompts,
and no change to the training), and --tensorboard (event files read back, a missing package)."""
import copy
import json
import math
import random
import sys

import pytest
import torch

from plumbing import models
from extras import plot
import config
import ppo
import train
from scripts import plot as plot_cli
import task
from plumbing import metrics as logs

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- hand-made run files

def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def ppo_rows(n, seed, gold=True):
    rng = random.Random(seed)
    rows = []
    for it in range(n):
        row = {"iteration": it, "score": rng.uniform(-1, 2), "kl": rng.uniform(0, 10), "entropy": 1.0,
               "samples": ["Add 1 2 -> 3"]}
        if gold:
            row["gold"] = rng.uniform(0, 1)
        rows.append(row)
    return rows + [{"stage_seconds": 3.2}]  # the summary row every stage ends with: not an iteration


RESULTS = {
    "n_eval": 8, "judge": "gold", "policies": {
        "SFT": {"win_rate": 48.0, "win_rate_ci": 6.5}, "Best-of-n": {"win_rate": 51.5, "win_rate_ci": 7.0},
        "PPO": {"win_rate": 19.5, "win_rate_ci": 2.9}, "PPO (gold reward)": {"win_rate": 70.25, "win_rate_ci": 4.0},
        "RLP-UML": {"win_rate": 29.2, "win_rate_ci": 3.0}},
    "rm_accuracy": {
        "Step-2 RM": {"SFT": {"accuracy": 0.73, "pairs": 274}, "PPO": {"accuracy": 0.511, "pairs": 227}},
        "RLP-UML RM": {"SFT": {"accuracy": 0.628, "pairs": 274}, "PPO": {"accuracy": 0.568, "pairs": 227}}}}


@pytest.fixture
def hand_run(tmp_path):
    """A run folder with ppo and ppo_gold complete, rlp_ppo_uml (no gold key: as with your own
    data) still running in its .partial folder, no rlp_ppo_spg, and an eval with outputs."""
    write_jsonl(tmp_path / "ppo" / "metrics.jsonl", ppo_rows(7, 0))
    write_jsonl(tmp_path / "ppo_gold" / "metrics.jsonl", ppo_rows(5, 1))
    write_jsonl(tmp_path / ".rlp_ppo_uml.partial" / "metrics.jsonl", ppo_rows(3, 2, gold=False)[:-1])
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(RESULTS))
    rng = random.Random(3)
    rows = []
    for i in range(12):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        answers = {"reference": str(a + b), "SFT": str(a + b + rng.choice([0, 1])), "PPO": str(rng.randint(0, 200))}
        rows.append({"instruction": "Add", "input": f"{a} {b}", **answers,
                     "rm_score": {k: rng.gauss(0, 1) for k in answers},
                     "gold_score": {k: task.gold_score("Add", f"{a} {b}", v) for k, v in answers.items()}})
    write_jsonl(tmp_path / "eval" / "outputs.jsonl", rows)
    return tmp_path


def test_ppo_logs_take_every_stage_there_is(hand_run):
    logs = plot.ppo_logs(hand_run, train.STAGES)
    ppo, gold, uml = [s.policy for s in train.STAGES if s.ppo][:3]
    assert list(logs) == [ppo, gold, f"{uml} (running)"]  # pipeline order, no RLP-SPG
    assert [r["iteration"] for r in logs["PPO"]] == list(range(7))  # the summary row left out
    assert [r["iteration"] for r in logs["RLP-UML (running)"]] == [0, 1, 2]


def test_ppo_curves_plot_exactly_the_logged_numbers(hand_run):
    logs = plot.ppo_logs(hand_run, train.STAGES)
    fig = plot.ppo_figure(logs)
    axes = fig.axes
    assert len(axes) == 3  # score, gold, kl
    for ax, key in zip(axes, ["score", "gold", "kl"]):
        lines = {line.get_label(): line for line in ax.get_lines()}
        # the stage without a gold score is not in the gold panel, and is in the other two
        want = [label for label, rows in logs.items() if key in rows[0]]
        assert sorted(lines) == sorted(want), key
        for label in want:
            rows = [json.loads(l) for l in (hand_run / {"PPO": "ppo", "PPO (gold reward)": "ppo_gold",
                                                          "RLP-UML (running)": ".rlp_ppo_uml.partial"}[label]
                                             / "metrics.jsonl").read_text().splitlines()]
            rows = [r for r in rows if "iteration" in r]
            assert list(lines[label].get_xdata()) == [r["iteration"] for r in rows]
            assert list(lines[label].get_ydata()) == [r[key] for r in rows]  # exactly the file's numbers
    assert "gold" not in logs["RLP-UML (running)"][0]


def test_ppo_curves_without_any_gold_have_no_gold_panel(tmp_path):
    write_jsonl(tmp_path / "ppo" / "metrics.jsonl", ppo_rows(4, 0, gold=False))
    fig = plot.ppo_figure(plot.ppo_logs(tmp_path, train.STAGES))
    assert [ax.get_title().split(" ")[0] for ax in fig.axes] == ["score", "KL"]


def test_win_rate_bars_and_intervals_are_the_results(hand_run):
    fig = plot.win_rate_figure(RESULTS)
    from matplotlib.container import BarContainer
    ax = fig.axes[0]
    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    names = list(RESULTS["policies"])
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [b.get_height() for b in bars] == [RESULTS["policies"][n]["win_rate"] for n in names]
    segments = bars.errorbar.lines[2][0].get_segments()  # one vertical segment per bar: rate -+ CI
    for seg, n in zip(segments, names):
        r = RESULTS["policies"][n]
        assert seg[0][1] == pytest.approx(r["win_rate"] - r["win_rate_ci"], abs=1e-12)
        assert seg[1][1] == pytest.approx(r["win_rate"] + r["win_rate_ci"], abs=1e-12)


def test_rm_accuracy_bars_are_the_results():
    fig = plot.rm_accuracy_figure(RESULTS)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["SFT samples", "PPO samples"]
    from matplotlib.container import BarContainer
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(containers) == len(RESULTS["rm_accuracy"])
    for container, (rm, accs) in zip(containers, RESULTS["rm_accuracy"].items()):
        assert container.get_label() == rm
        assert [b.get_height() for b in container] == [100 * accs[s]["accuracy"] for s in ["SFT", "PPO"]]


def test_draw_writes_every_figure_and_hacks(hand_run, tmp_path):
    names = plot.draw(hand_run, train.STAGES)
    assert names == ["ppo_curves.png", "win_rates.png", "rm_accuracy.png", "hacks.md"]
    from matplotlib.image import imread
    for name in names[:3]:
        img = imread(hand_run / "eval" / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400, name
    assert not list((hand_run / "eval").glob("*.tmp"))
    embedded = plot.embed(names)
    assert "![ppo_curves](ppo_curves.png)" in embedded and "(hacks.md)" in embedded
    # --out: the same files elsewhere; eval/ untouched
    before = (hand_run / "eval" / "win_rates.png").stat().st_mtime_ns
    plot_cli.main([str(hand_run), "--out", str(tmp_path / "figs")])
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(names)
    assert (hand_run / "eval" / "win_rates.png").stat().st_mtime_ns == before


def test_draw_a_run_in_progress_and_an_empty_folder(tmp_path):
    write_jsonl(tmp_path / ".ppo.partial" / "metrics.jsonl", ppo_rows(2, 0)[:-1])
    (tmp_path / ".ppo.partial" / "metrics.jsonl").open("a").write('{"iteration": 2, "sco')  # being written
    assert plot.draw(tmp_path, train.STAGES) == ["ppo_curves.png"]  # no eval yet: the curves alone
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="nothing to draw"):
        plot_cli.main([str(empty)])
    with pytest.raises(SystemExit, match="no such run folder"):
        plot_cli.main([str(tmp_path / "missing")])


def test_rank_fractions_against_a_slow_loop():
    rng = random.Random(0)
    for n in [1, 2, 5, 30]:
        values = [rng.choice([0.0, 0.25, 0.5, 1.0, rng.random()]) for _ in range(n)]  # with ties
        got = plot.rank_fractions(values)
        for i, v in enumerate(values):  # mean rank of the tied group = #below + (#equal - 1) / 2
            below, equal = sum(w < v for w in values), sum(w == v for w in values)
            assert got[i] == pytest.approx((below + (equal - 1) / 2) / max(n - 1, 1))


def test_hacks_are_the_largest_rm_over_gold_rank_gaps():
    rng = random.Random(1)
    for _ in range(20):
        n = rng.randint(1, 25)
        rm = [rng.gauss(0, 1) for _ in range(n)]
        gold = [rng.choice([1.0, rng.random() / 2]) for _ in range(n)]
        got = plot.hack_indices(rm, gold, k=3)
        wrong = [i for i in range(n) if gold[i] < 1]
        rm_rank, gold_rank = plot.rank_fractions(rm), plot.rank_fractions(gold)
        gaps = sorted((rm_rank[i] - gold_rank[i] for i in wrong), reverse=True)
        assert len(got) == min(3, len(wrong)) and all(gold[i] < 1 for i in got)
        assert [rm_rank[i] - gold_rank[i] for i in got] == pytest.approx(gaps[:3])
    # by hand: the RM's favourite is the worst answer; the right answer is never a hack
    assert plot.hack_indices([3.0, 0.0, 1.0, 2.0], [0.1, 0.4, 0.3, 1.0], k=1) == [0]


def test_hacks_markdown(hand_run):
    rows = [json.loads(l) for l in (hand_run / "eval" / "outputs.jsonl").read_text().splitlines()]
    text = plot.hacks_markdown(rows)
    assert "## SFT" in text and "## PPO" in text and "## reference" not in text
    ppo_part = text.split("## PPO")[1]
    rm = [r["rm_score"]["PPO"] for r in rows]
    gold = [r["gold_score"]["PPO"] for r in rows]
    for i in plot.hack_indices(rm, gold):  # each chosen answer, quoted, with its right answer and scores
        assert f"| Add | {rows[i]['input']} | \"{rows[i]['PPO']}\" | {task.solve('Add', rows[i]['input'])} | " \
               f"{rm[i]:.2f} (" in ppo_part
    assert f"{sum(g == 1.0 for g in gold)} of 12 answers right" in ppo_part


def test_markdown_table_escapes_cells():
    table = logs.markdown_table([{"a": "x|y", "b": "two\nlines"}, {"a": 1.5, "b": ""}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | two lines |", "| 1.5 |  |"]


# ----------------------------------------------------------------------------- the sample table

def tiny_ppo(tmp_path, samples_path, iterations=3):
    """A few PPO iterations of a tiny random Llama on the built-in task's prompts; the policy's
    final weights, the metrics rows, and the sample rows (samples_path None: no sample table)."""
    tok = models.build_char_tokenizer()
    policy = models.new_tiny_llama(tok, 32, 2, 2, 48, seed=0)
    ref = copy.deepcopy(policy)
    models.save_pretrained(policy, tok, tmp_path / "tiny")
    torch.manual_seed(1)
    rm = models.load_scorer(tmp_path / "tiny", torch.device("cpu"))
    value = models.load_scorer(tmp_path / "tiny", torch.device("cpu"), fresh_head=True)
    recs = task.make_splits(0, n_sft=8, n_pref=8, n_unlabeled=24, n_eval=4, sft_noise=0.3)["unlabeled"]
    cfg = config.PPOConfig(ppo_iterations=iterations, rollout_batch=8, step_batch=4, ppo_epochs=2, ppo_lr=1e-3,
                           kl_coef=0.05)
    metrics = logs.Metrics(tmp_path / f"metrics_{samples_path is not None}.jsonl")
    samples = logs.Metrics(samples_path) if samples_path is not None else None
    torch.manual_seed(5)  # the global stream as a stage starts (runs.seed_everything)
    gold = lambda rec, text: task.gold_score(rec["instruction"], rec["input"], text)  # noqa: E731
    prompts = models.encode_prompts(tok, recs, "compact", 32)
    log = ppo.PPOLog(metrics, samples, tok, prompts, recs, cfg, config.seeds(0), 8, gold)
    ppo.train_ppo(policy, ref, rm, value, tok, prompts, recs, cfg, config.seeds(0), max_response_len=8,
                  max_grad_norm=1.0, log=log, gold=gold, show=False)
    metrics.close()
    rows = [json.loads(l) for l in metrics.path.read_text().splitlines()]
    sample_rows = []
    if samples is not None:
        samples.close()
        sample_rows = [json.loads(l) for l in samples_path.read_text().splitlines()]
    return policy, rows, sample_rows, recs


def test_sample_table_fixed_prompts_and_no_change_to_training(tmp_path):
    plain, plain_rows, _, _ = tiny_ppo(tmp_path / "a", None)
    logged, rows, samples, recs = tiny_ppo(tmp_path / "b", tmp_path / "samples.jsonl")
    # bitwise the same training: weights and every logged number
    for (name, p), q in zip(plain.named_parameters(), logged.parameters()):
        assert torch.equal(p, q), name
    assert rows == plain_rows
    # the same SAMPLE_PROMPTS prompts, the first of the set, every iteration, with every field
    k = ppo.SAMPLE_PROMPTS
    assert [(r["iteration"], r["prompt"]) for r in samples] == [(it, i) for it in range(3) for i in range(k)]
    for r in samples:
        rec = recs[r["prompt"]]
        assert list(r) == ["iteration", "prompt", "instruction", "input", "response", "score", "gold", "kl"]
        assert (r["instruction"], r["input"]) == (rec["instruction"], rec["input"])
        assert r["gold"] == round(task.gold_score(rec["instruction"], rec["input"], r["response"]), 6)
        assert math.isfinite(r["score"]) and math.isfinite(r["kl"])
    assert all(r["kl"] == 0.0 for r in samples if r["iteration"] == 0)  # policy = reference before any update
    assert any(r["kl"] != 0.0 for r in samples if r["iteration"] > 0)
    # the policy moves: the same prompt gets other responses or scores over training
    first = [r for r in samples if r["prompt"] == 0]
    assert len({(r["response"], r["score"]) for r in first}) > 1


# ----------------------------------------------------------------------------- TensorBoard

def tb_scalars(folder, tag) -> list[tuple[int, float]]:
    """(step, value) of a scalar as TensorBoard shows it: read by the accumulator its server uses
    (plugin_event_accumulator), and the same by the older EventAccumulator."""
    from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
    from tensorboard.util import tensor_util
    acc = plugin_event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    got = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    old = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    old.Reload()
    assert [(e.step, e.value) for e in old.Scalars(tag)] == got
    return got


def tb_texts(folder, tag) -> list[tuple[int, str]]:
    from tensorboard.backend.event_processing import plugin_event_accumulator
    acc = plugin_event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]


def tb_tags(folder) -> list[str]:
    from tensorboard.backend.event_processing import plugin_event_accumulator
    acc = plugin_event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return sorted(acc.Tags()["tensors"])


def test_tensorboard_round_trip(tmp_path):
    writer = logs.tensorboard_writer(tmp_path / "tb" / "ppo")
    metrics = logs.Metrics(tmp_path / "metrics.jsonl", tensorboard=writer)
    samples = logs.Metrics(tmp_path / "samples.jsonl", tensorboard=writer)
    rng = random.Random(0)
    want = {}
    for it in range(4):
        row = {"iteration": it, "score": rng.random(), "kl": 3 * rng.random(), "lr": 1e-4, "n": it + 1,
               "eos": True, "samples": ["a -> b"]}
        metrics.log(**row)
        want[it] = row
        samples.log_rows([{"iteration": it, "prompt": p, "response": f"r{it}|{p}", "score": 0.5} for p in range(2)],
                         "samples")
    metrics.log(stage_seconds=12.5)  # a summary row: at the last step
    metrics.close()
    samples.close()
    writer.close()
    folder = tmp_path / "tb" / "ppo"
    # numbers only, not the x; the samples table as text
    assert tb_tags(folder) == ["kl", "lr", "n", "samples/text_summary", "score", "stage_seconds"]
    for key in ["score", "kl", "lr", "n"]:
        got = tb_scalars(folder, key)
        assert [step for step, _ in got] == [0, 1, 2, 3]
        assert [v for _, v in got] == pytest.approx([round(want[i][key], 6) for i in range(4)], rel=1e-6)
    assert tb_scalars(folder, "stage_seconds") == [(3, 12.5)]
    texts = tb_texts(folder, "samples/text_summary")
    assert [step for step, _ in texts] == [0, 1, 2, 3]
    assert "| iteration | prompt | response | score |" in texts[2][1] and "| 2 | 1 | r2\\|1 | 0.5 |" in texts[2][1]


def killed_and_resumed(folder, path, log, cut_after=1, old=range(5), new=range(2, 6)):
    """A log (`log(metrics, iteration, attempt)`) written by a killed attempt, then cut back to
    iteration `cut_after` as a resumed PPO stage does and continued by the resumed attempt."""
    writer = logs.tensorboard_writer(folder)
    metrics = logs.Metrics(path, tensorboard=writer)
    sizes = {}
    for it in old:
        log(metrics, it, "old")
        sizes[it] = metrics.size()
    metrics.close()
    writer.close()
    writer = logs.tensorboard_writer(folder, fresh=False)
    metrics = logs.Metrics(path, tensorboard=writer)
    metrics.truncate(sizes[cut_after])
    for it in new:
        log(metrics, it, "new")
    metrics.close()
    writer.close()


def test_tensorboard_resume_purges_what_the_log_lost(tmp_path):
    """A resumed PPO stage cuts metrics.jsonl back to its checkpoint: TensorBoard then shows
    each iteration once, with the resumed run's values (one cut: the restart marker that
    purges must not be taken for the run's first one)."""
    folder = tmp_path / "tb"
    killed_and_resumed(folder, tmp_path / "metrics.jsonl",
                       lambda m, it, attempt: m.log(iteration=it, score=it + (100.0 if attempt == "new" else 0.0)))
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    want = [(r["iteration"], r["score"]) for r in rows]
    assert want == [(0, 0.0), (1, 1.0), (2, 102.0), (3, 103.0), (4, 104.0), (5, 105.0)]
    assert tb_scalars(folder, "score") == want
    # nothing cut (killed right after a checkpoint): nothing purged
    writer = logs.tensorboard_writer(folder, fresh=False)
    metrics = logs.Metrics(tmp_path / "metrics.jsonl", tensorboard=writer)
    metrics.truncate(metrics.size())
    metrics.close()
    writer.close()
    assert tb_scalars(folder, "score") == want


def test_tensorboard_resume_purges_the_sample_tables(tmp_path):
    folder = tmp_path / "tb"
    killed_and_resumed(folder, tmp_path / "samples.jsonl",
                       lambda m, it, attempt: m.log_rows([{"iteration": it, "prompt": 0, "response": attempt}] * 2,
                                                         "samples"))
    assert [(step, text.count("| new |"), text.count("| old |")) for step, text in
            tb_texts(folder, "samples/text_summary")] == [(0, 0, 2), (1, 0, 2), (2, 2, 0), (3, 2, 0), (4, 2, 0),
                                                          (5, 2, 0)]


def test_missing_tensorboard_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(SystemExit) as e:
        logs.tensorboard_writer(tmp_path / "tb")
    assert str(e.value) == f"error: --tensorboard needs the tensorboard package: pip install {logs.TENSORBOARD}"
    with pytest.raises(SystemExit) as e:
        train.main(["--tensorboard", "--out", str(tmp_path / "run"), "--stage", "data"])
    assert "pip install tensorboard==2.21.0" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # stopped before any work


def test_tensorboard_pin_matches_requirements():
    from pathlib import Path
    dev = (Path(__file__).resolve().parents[2] / "requirements-dev.txt").read_text().split()
    assert logs.TENSORBOARD in dev
