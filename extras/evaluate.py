"""Evaluation: win-rate of every policy against a reference answer per instruction.

Policies: SFT, Best-of-n (n SFT samples ranked by the Step-2 RM), PPO (Step 3), RLP-UML and
RLP-SPG (Step 5), and on the built-in task PPO (gold reward): the same PPO on the gold judge's
score, the ceiling a perfect reward model would give. Each answers every evaluation instruction once at the evaluation temperature
(paper: 0.7) and is compared with ONE fixed reference output per instruction: the evaluation
file's `output` when it has one (AlpacaFarm's eval set holds text-davinci-003's), else an SFT
sample drawn once with its own seed (our stand-in), so that SFT's own win-rate is about 50%.

The judge (--eval-judge) says who wins; a tie counts half:
  gold  the built-in task's judge, which knows every answer (also gives gold scores);
  lm    a local instruction-tuned LM asked "which response is better?" in both orders, a tie
        when the orders disagree (extras/judge.py); weak when the model is small (docs/own_data.md);
  rm    a reward model's scores (the Step-2 RM unless --judge-model: PPO optimised that one,
        so it flatters PPO's answers).

Reward models (built-in task only): the Step-2 RM and each re-learned RM, scored by pairwise
accuracy on gold-labelled pairs (two samples at T = 1 for each evaluation instruction, exact
gold ties dropped) drawn from SFT and from each trained policy: the paper's off-distribution
claim.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

import lm
import reward
import task
from plumbing import dist, models
from plumbing.sampling import generate_texts, make_generator, score_texts

BEST_OF_N = "Best-of-n"  # not a stage: SFT samples ranked by the Step-2 RM, shown right after SFT


def policy_labels(stages) -> list[str]:
    """The policies' labels in the order of every table: by their place in evaluation
    (train.STAGES' eval_index), Best-of-n right after SFT."""
    labels = [s.policy for s in sorted((s for s in stages if s.policy), key=lambda s: s.eval_index)]
    return labels[:1] + [BEST_OF_N] + labels[1:]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a normal-approximation 95% confidence interval."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(1, n - 1)
    return mean, 1.96 * math.sqrt(var / n)


def gold_pairs(tokenizer, records, prompts, outputs: list[list[str]], max_response_len: int) -> list[reward.Pair]:
    """Gold-labelled pairs from two samples per instruction; exact gold ties are dropped."""
    pairs = []
    for rec, p, (a, b) in zip(records, prompts, outputs):
        sa, sb = task.gold_score(rec["instruction"], rec["input"], a), task.gold_score(rec["instruction"],
                                                                                      rec["input"], b)
        if sa == sb:
            continue
        w, l = (a, b) if sa > sb else (b, a)
        c_ids, r_ids = lm.encode_responses(tokenizer, [w, l], max_response_len)
        pairs.append(reward.Pair(p, c_ids, r_ids))
    return pairs


def win_stats(wins: list[float]) -> dict:
    """Win-rate (%) with its 95% CI, and the share of ties, from per-instruction values 1 / 0.5 / 0."""
    win, win_ci = mean_ci(wins)
    return {"win_rate": 100 * win, "win_rate_ci": 100 * win_ci, "ties": sum(w == 0.5 for w in wins) / len(wins)}


def score_outputs(records, outputs: list[str], reference: list[str]) -> dict:
    """The gold judge (built-in task): win-rate, mean gold score, exact accuracy."""
    gold = [task.gold_score(r["instruction"], r["input"], o) for r, o in zip(records, outputs)]
    ref = [task.gold_score(r["instruction"], r["input"], o) for r, o in zip(records, reference)]
    mean, mean_ci_ = mean_ci(gold)
    return {**win_stats([task.win_value(g, s) for g, s in zip(gold, ref)]), "gold_score": mean,
            "gold_score_ci": mean_ci_, "accuracy": sum(g == 1.0 for g in gold) / len(gold)}


def label_wins(labels: list[int]) -> list[float]:
    """judge.judge_pairs labels (1: the policy's answer, 2: the reference, 0: tie) -> 1 / 0 / 0.5."""
    return [{1: 1.0, 2: 0.0, 0: 0.5}[label] for label in labels]


def score_wins(scores: torch.Tensor, reference_scores: torch.Tensor) -> list[float]:
    """RM judge: 1 when the policy's answer scores higher than the reference, 0.5 when equal."""
    return [task.win_value(s, r) for s, r in zip(scores.tolist(), reference_scores.tolist())]


def markdown(results: dict) -> str:
    gold = results["judge"] == "gold"
    lines = [f"Evaluation on {results['n_eval']} held-out instructions; judge: {results['judge_name']}; reference: "
             f"{results['reference']}. ± = 95% CI over instructions.", ""]
    if gold:
        lines += ["| method | win-rate vs reference (%) | mean gold score | exact accuracy |", "|---|---|---|---|"]
    else:
        lines += ["| method | win-rate vs reference (%) | ties (%) |", "|---|---|---|"]
    for name, r in results["policies"].items():
        if gold:
            lines.append(f"| {name} | {r['win_rate']:.1f} ± {r['win_rate_ci']:.1f} | {r['gold_score']:.3f} ± "
                         f"{r['gold_score_ci']:.3f} | {100 * r['accuracy']:.1f}% |")
        else:
            lines.append(f"| {name} | {r['win_rate']:.1f} ± {r['win_rate_ci']:.1f} | {100 * r['ties']:.1f} |")
    sources = list(next(iter(results.get("rm_accuracy", {}).values()), {}))
    if sources:
        lines += ["", "Reward-model pairwise accuracy (%) on gold-labelled pairs sampled from each policy:", "",
                  "| reward model | " + " | ".join(f"{s} samples" for s in sources) + " |",
                  "|---|" + "---|" * len(sources)]
        for rm_name, accs in results["rm_accuracy"].items():
            cells = [f"{100 * accs[s]['accuracy']:.1f} (n={accs[s]['pairs']})" for s in sources]
            lines.append(f"| {rm_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate(out_dir: Path, records, cfg, device, stages, seeds, show: bool = True) -> tuple[dict, dict[str, list[str]]]:
    """Everything `eval` reports; returns (results, outputs per method). `stages`: train.STAGES,
    which names every policy and RM the run may have."""
    out_dir = Path(out_dir)
    tokenizer = models.load_tokenizer(out_dir / "sft")
    prompts = models.encode_prompts(tokenizer, records, cfg.model.prompt_style, cfg.model.max_prompt_len)
    gen = dict(max_new_tokens=cfg.model.max_response_len, batch_size=cfg.model.gen_batch, show=show)
    T = cfg.eval.eval_temperature

    # in evaluation order; a policy's eval_index fixes its sampling seeds (seeds.eval_answers + index),
    # so a new policy takes a new index and leaves every other policy's numbers as they were
    policies = {s.policy: out_dir / s.policy_dir for s in sorted((s for s in stages if s.policy),
                                                                 key=lambda s: s.eval_index)}
    policies = {k: v for k, v in policies.items() if (v / "config.json").is_file()}
    index = {s.policy: s.eval_index for s in stages if s.policy}
    rms = {s.rm: out_dir / s.folder for s in stages if s.rm}
    rms = {k: v for k, v in rms.items() if (v / "config.json").is_file()}
    policies, rms = dist.broadcast_object((policies, rms))  # rank 0's view of the folder, on every rank
    sft_label = next(s.policy for s in stages if s.folder == "sft")
    step2_label = next(s.rm for s in stages if s.folder == "reward")

    given_reference = bool(records) and all("output" in r for r in records)
    gold = cfg.eval.eval_judge == "gold"
    outputs: dict[str, list[str]] = {}
    if given_reference:
        outputs["reference"] = [r["output"] for r in records]
    pair_samples: dict[str, list[list[str]]] = {}
    best_n = cfg.eval.best_of_n
    for name, path in policies.items():
        i = index[name]
        policy = models.load_policy(path, device)
        if name == sft_label:
            if not given_reference:
                g = make_generator(device, seeds.eval_reference)
                outputs["reference"] = [o[0] for o in generate_texts(policy, tokenizer, prompts, 1, T,
                                                                     generator=g, desc="reference", **gen)]
            g = make_generator(device, seeds.best_of_n)
            best_of = generate_texts(policy, tokenizer, prompts, best_n, T, generator=g, desc=f"best-of-{best_n}",
                                     **gen)
        g = make_generator(device, seeds.eval_answers + i)
        outputs[name] = [o[0] for o in generate_texts(policy, tokenizer, prompts, 1, T, generator=g,
                                                      desc=f"eval {name}", **gen)]
        if gold:  # gold-labelled pairs for RM accuracy on this policy's samples
            g = make_generator(device, seeds.eval_pairs + i)
            pair_samples[name] = generate_texts(policy, tokenizer, prompts, 2, 1.0, generator=g,
                                                desc=f"pairs {name}", **gen)
        del policy

    if sft_label in policies and step2_label in rms:  # Best-of-n: SFT samples ranked by the Step-2 RM
        rm = models.load_scorer(rms[step2_label], device)
        flat = [o for row in best_of for o in row]
        scores = score_texts(rm, tokenizer, [p for p in prompts for _ in range(best_n)], flat,
                             cfg.model.max_response_len, cfg.model.gen_batch).view(len(prompts), best_n)
        outputs[BEST_OF_N] = [row[j] for row, j in zip(best_of, scores.argmax(-1).tolist())]

    if "reference" not in outputs:
        raise SystemExit(f"error: eval needs a reference: the evaluation file's 'output' fields, or the SFT policy "
                         f"({out_dir / 'sft'})")
    names = [name for name in policy_labels(stages) if name in outputs]
    results = {"n_eval": len(records), "eval_temperature": T, "best_of_n": best_n, "judge": cfg.eval.eval_judge,
               "reference": "the evaluation file's outputs" if given_reference else
               "one SFT sample per instruction at the evaluation temperature (seed + 1000)",
               "policies": {}, "rm_accuracy": {}}
    if gold:
        results["judge_name"] = "the built-in task's gold judge"
        for name in names:
            results["policies"][name] = score_outputs(records, outputs[name], outputs["reference"])
    else:
        results["judge_name"], wins = judge_outputs(out_dir, records, prompts, tokenizer, cfg, device,
                                                    {name: outputs[name] for name in names}, outputs["reference"])
        results["policies"] = {name: win_stats(w) for name, w in wins.items()}

    if not gold:
        return results, outputs
    pairs = {src: gold_pairs(tokenizer, records, prompts, samples, cfg.model.max_response_len)
             for src, samples in pair_samples.items()}
    for rm_name, path in rms.items():
        rm = models.load_scorer(path, device)
        results["rm_accuracy"][rm_name] = {
            src: reward.pairwise_accuracy(rm, p, tokenizer.pad_token_id, cfg.model.gen_batch) for src, p in pairs.items()}
        del rm
    return results, outputs


def judge_outputs(out_dir: Path, records, prompts, tokenizer, cfg, device, outputs: dict[str, list[str]],
                  reference: list[str]) -> tuple[str, dict[str, list[float]]]:
    """Without a gold judge: (the judge's name, per-instruction win values of each policy's
    answers against the reference), from an LM judge or a reward model (--eval-judge)."""
    ev, m = cfg.eval, cfg.model
    if ev.eval_judge == "rm":
        if ev.judge_model:  # a reward model from elsewhere (another run's reward/): its own tokenizer and format
            path = Path(ev.judge_model)
            with models.loading("--judge-model", str(path)):
                rm, rm_tok = models.load_scorer(path, device), models.load_tokenizer(path)
            if len(rm_tok) > rm.get_input_embeddings().num_embeddings:
                raise SystemExit(f"error: --judge-model {path}: its tokenizer has no pad token distinct from EOS; "
                                 f"give a reward model saved by this project (a run's reward/ folder)")
            rm_prompts = models.encode_prompts(rm_tok, records, models.default_prompt_style(rm_tok), m.max_prompt_len)
        else:
            path = out_dir / "reward"
            rm, rm_tok, rm_prompts = models.load_scorer(path, device), tokenizer, prompts
        score = lambda texts: score_texts(rm, rm_tok, rm_prompts, texts, m.max_response_len, m.gen_batch)  # noqa: E731
        ref_scores = score(reference)
        return f"reward model {path}", {name: score_wins(score(o), ref_scores) for name, o in outputs.items()}
    from extras import judge
    name = ev.judge_model or m.model
    with models.loading("--judge-model" if ev.judge_model else "--model", name):
        model, judge_tok = models.load_pretrained(name, device)
    return (f"LM {name}, asked in both orders",
            {policy: label_wins(judge.judge_pairs(model, judge_tok, records, o, reference, m.gen_batch))
             for policy, o in outputs.items()})


def answer_scores(out_dir: Path, records, outputs: dict[str, list[str]], cfg, device) -> dict[str, dict]:
    """Every answer's Step-2 RM score ("rm_score", when the run has that RM) and gold score
    ("gold_score", with the gold judge), per method: eval/outputs.jsonl keeps them beside the
    answers, and plot.py's eval/hacks.md reads them (the answers the RM rates highest and the
    gold judge lowest). No reported number comes from here; scoring draws no random numbers."""
    out_dir = Path(out_dir)
    scores: dict[str, dict] = {}
    if dist.broadcast_object((out_dir / "reward" / "config.json").is_file()):
        tokenizer = models.load_tokenizer(out_dir / "sft")
        m = cfg.model
        prompts = models.encode_prompts(tokenizer, records, m.prompt_style, m.max_prompt_len)
        rm = models.load_scorer(out_dir / "reward", device)
        scores["rm_score"] = {name: score_texts(rm, tokenizer, prompts, texts, m.max_response_len, m.gen_batch).tolist()
                              for name, texts in outputs.items()}
    if cfg.eval.eval_judge == "gold":
        scores["gold_score"] = {name: [task.gold_score(r["instruction"], r["input"], t) for r, t in zip(records, texts)]
                                for name, texts in outputs.items()}
    return scores


def stage_eval(run, dest, metrics, stages) -> None:
    """The eval stage: every policy's answers judged against the reference, every RM's accuracy on
    every policy's samples, the figures and eval/hacks.md (`stages`: train.STAGES)."""
    from plumbing import data
    recs = run.records("eval", data.INSTRUCTION)
    results, outputs = evaluate(run.out, recs, run.cfg, run.device, stages, run.seeds, show=run.show)
    scores = answer_scores(run.out, recs, outputs, run.cfg, run.device)  # for eval/hacks.md
    rows = [{"instruction": r["instruction"], "input": r["input"], **{k: v[i] for k, v in outputs.items()},
             **{k: {name: s[i] for name, s in v.items()} for k, v in scores.items()}} for i, r in enumerate(recs)]
    run.write_records(dest / "outputs.jsonl", rows)
    run.write_json(dest / "results.json", results)
    table = markdown(results)
    figures = ""
    if run.main:  # the figures and eval/hacks.md, from the files just written and the PPO stages' logs
        from extras import plot
        figures = plot.embed(plot.draw(run.out, stages, dest))
    run.write_text(dest / "results.md", table + figures)
    metrics.log(**{f"{k}_win_rate": v["win_rate"] for k, v in results["policies"].items()})
    run.log("\n" + table)
