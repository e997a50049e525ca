"""Step 2, reward learning: an LM backbone with a scalar head, trained with the
Bradley-Terry loss on preference pairs. Step 4 (rlp.py) reuses `train_reward_model`
with its own pairs and an extra loss term (Eq. 1).

r(x, y) = the score head applied to the final-layer hidden state of the last real
token of prompt+response (lm.sequence_scores), initialised from the SFT model.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

import lm
import task
from plumbing import dist, fsdp, models
from plumbing.sampling import score_texts


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Step 2 / Eq. 1, first term: -E[log sigma(r(x, y_w) - r(x, y_l))]."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


@dataclass
class Pair:
    """One preference, tokenised: prompt ids, chosen (y_w) ids, rejected (y_l) ids."""
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def make_pairs(tokenizer, records, style: str, max_prompt_len: int, max_response_len: int) -> list[Pair]:
    """AlpacaFarm preference records -> tokenised pairs (chosen = output_{preference})."""
    prompts = models.encode_prompts(tokenizer, records, style, max_prompt_len)
    chosen = [r["output_1"] if r["preference"] == 1 else r["output_2"] for r in records]
    rejected = [r["output_2"] if r["preference"] == 1 else r["output_1"] for r in records]
    c_ids = lm.encode_responses(tokenizer, chosen, max_response_len)
    r_ids = lm.encode_responses(tokenizer, rejected, max_response_len)
    return [Pair(p, c, r) for p, c, r in zip(prompts, c_ids, r_ids)]


def pair_rewards(rm, pairs: list[Pair], pad_id: int):
    """Chosen and rejected rewards of a batch of pairs in one forward (checklist 6)."""
    device = next(rm.parameters()).device
    p_ids, p_mask = lm.left_pad([p.prompt for p in pairs] * 2, pad_id, device)
    r_ids, r_mask = lm.right_pad([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
    with lm.autocast(device):
        scores = lm.sequence_scores(rm, p_ids, p_mask, r_ids, r_mask)
    return scores[:len(pairs)], scores[len(pairs):]


@torch.no_grad()
def pairwise_accuracy(rm, pairs: list[Pair], pad_id: int, batch_size: int = 64) -> dict:
    """Fraction of pairs where r(y_w) > r(y_l) (a tie counts half), and the mean margin.
    Each rank scores its shard of the pairs; the counts are summed over ranks."""
    rm.eval()
    correct, margin = 0.0, 0.0
    local = dist.shard(pairs)
    n_local = len(local)
    local += [pairs[i] for i in fsdp.lockstep_padding(rm, len(pairs))]  # under --fsdp: as many forwards as rank 0
    for i in range(0, len(local), batch_size):
        c, r = pair_rewards(rm, local[i:i + batch_size], pad_id)
        c, r = c[:max(0, n_local - i)], r[:max(0, n_local - i)]  # the padding counts for nothing
        correct += ((c > r).float() + 0.5 * (c == r).float()).sum().item()
        margin += (c - r).float().sum().item()
    correct, margin = dist.all_sum([correct, margin]).tolist()
    if not pairs:
        return {"accuracy": float("nan"), "margin": float("nan"), "pairs": 0}
    return {"accuracy": correct / len(pairs), "margin": margin / len(pairs), "pairs": len(pairs)}


@torch.no_grad()
def normalize_scores(rm, tokenizer, prompts: list[list[int]], responses: list[str], max_response_len: int,
                     batch_size: int = 128) -> tuple[float, float]:
    """Checklist 7: shift and scale the RM so its scores on SFT samples have mean 0, std 1
    (stored in the config as score_mean / score_std), so the KL coefficient means the same
    for every RM, including the re-learned ones of Step 4."""
    rm.config.score_mean, rm.config.score_std = 0.0, 1.0
    raw = score_texts(rm, tokenizer, prompts, responses, max_response_len, batch_size)
    mean, std = raw.mean().item(), max(raw.std().item(), 1e-6)
    rm.config.score_mean, rm.config.score_std = mean, std
    return mean, std


def num_steps(n_pairs: int, batch_size: int, epochs: float) -> int:
    return max(1, math.ceil(max(1, n_pairs // batch_size) * epochs))


def accumulate_gradients(rm, pairs: list[Pair], batch: list[int], pad_id: int, micro: int) -> dict:
    """The gradient of the Bradley-Terry loss of the global batch (indices `batch`) in .grad,
    without the all-reduce (the caller may add more loss terms first): this rank back-propagates
    its shard in micro-batches, each weighted by its share of the global batch. Returns the
    global batch's loss and accuracy (all-reduced)."""
    loss_sum, correct = 0.0, 0.0
    for idx in dist.chunks(dist.shard(batch), micro):
        chosen, rejected = pair_rewards(rm, [pairs[i] for i in idx], pad_id)
        loss = bradley_terry_loss(chosen, rejected) * (len(idx) / len(batch))
        loss.backward()
        loss_sum += loss.item()
        correct += ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).sum().item()
    loss_sum, correct = dist.all_sum([loss_sum, correct]).tolist()
    return {"bt_loss": loss_sum, "train_acc": correct / len(batch)}


def train_reward_model(rm, pairs: list[Pair], pad_id: int, *, lr: float, batch_size: int, epochs: float,
                       max_grad_norm: float, seed: int, micro_batch: int = 0, metrics=None,
                       val_pairs: list[Pair] | None = None,
                       extra_loss: Callable[[int], tuple[torch.Tensor, dict]] | None = None,
                       extra_params=(), extra_lr: float | None = None, desc: str = "reward",
                       show: bool = True) -> None:
    """Minimise the Bradley-Terry loss over `pairs` (plus `extra_loss(step)`, Eq. 1's
    lambda * L_M term in RLP-UML, which returns this rank's share of it). AdamW, linear
    warm-up over the first 5% of steps, then constant (our choice). batch_size is global.
    With an extra loss, every logged step also has the norms of the two terms' gradients on the
    backbone (every parameter but the score head, which L_M does not reach) and their cosine."""
    micro = dist.micro_size(dist.per_rank(batch_size, "--rm-batch"), micro_batch, "--rm-batch")
    total = num_steps(len(pairs), batch_size, epochs)
    rm_params = dist.trainable_parameters(rm)
    extra_params = list(extra_params)
    dist.broadcast_parameters(rm)
    groups = [{"params": rm_params, "lr": lr}]
    if extra_params:  # new heads (UML) get their own learning rate and their own clipping
        groups.append({"params": extra_params, "lr": extra_lr or lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    batches = dist.Batches(len(pairs), batch_size, seed)
    rm.train()
    for step in tqdm(range(total), desc=desc, disable=not show, leave=False):
        log_now = metrics is not None and (step % 10 == 0 or step == total - 1)
        opt.zero_grad(set_to_none=True)
        row = accumulate_gradients(rm, pairs, batches.next(), pad_id, micro)
        if extra_loss is not None:
            backbone = [p for name, p in rm.named_parameters() if p.requires_grad and not name.startswith("score.")]
            bt_grads = [None if p.grad is None else p.grad.detach().clone() for p in backbone] if log_now else None
            extra, extra_row = extra_loss(step)
            extra.backward()
            row.update(extra_row)
            if log_now:  # what each term of Eq. 1 asks of the backbone (a copy: the gradients stay as they are)
                row.update(dist.gradient_split(bt_grads, [p.grad for p in backbone], names=("bt", "extra")))
        dist.sum_gradients(rm_params + extra_params)
        row["grad_norm"] = torch.nn.utils.clip_grad_norm_(rm_params, max_grad_norm).item()
        if extra_params:
            torch.nn.utils.clip_grad_norm_(extra_params, max_grad_norm)
        row["lr"] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        if log_now:
            metrics.log(step=step, **row)
    rm.eval()
    if val_pairs:
        val = pairwise_accuracy(rm, val_pairs, pad_id)  # every rank takes part; rank 0 logs
        if metrics is not None:
            metrics.log(step=total, **{f"val_{k}": v for k, v in val.items()})


# ----------------------------------------------------------------------------- how the pipeline runs it

def split_pairs(records, fraction: float, seed: int):
    """D split into train and held-out records: `fraction` held out, drawn with `seed`."""
    rng = random.Random(seed)
    idx = list(range(len(records)))
    rng.shuffle(idx)
    n_val = int(round(fraction * len(records)))
    val = sorted(idx[:n_val])
    train = sorted(idx[n_val:])
    return [records[i] for i in train], [records[i] for i in val]


def human_pairs(run, tokenizer):
    """D: the Step-1 pairs, split into train and held-out pairs (the same split for Step 2 and
    Step 4); also the held-out records, for gold-labelled accuracy."""
    cfg = run.cfg
    train_recs, val_recs = split_pairs(run.read("prefs", "prefs.jsonl"), cfg.reward.rm_val_fraction, run.seeds.reward)
    return to_pairs(run, tokenizer, train_recs), to_pairs(run, tokenizer, val_recs), val_recs


def to_pairs(run, tokenizer, records) -> list[Pair]:
    m = run.cfg.model
    return make_pairs(tokenizer, records, m.prompt_style, m.max_prompt_len, m.max_response_len)


def sft_sample_texts(run, tokenizer):
    """SFT samples (both outputs of every Step-1 pair) with their prompts: the distribution
    on which every RM is normalised to mean 0, std 1. With your own preference file these are
    its outputs, whoever wrote them."""
    recs = run.read("prefs", "prefs.jsonl")
    prompts = run.prompts(tokenizer, recs)
    return [p for p in prompts for _ in range(2)], [o for r in recs for o in (r["output_1"], r["output_2"])]


def normalize_on_sft_samples(run, rm, tokenizer, metrics=None) -> tuple[float, float]:
    """Checklist 7 for any RM of the run: normalised on the Step-1 SFT samples."""
    mean, std = normalize_scores(rm, tokenizer, *sft_sample_texts(run, tokenizer), run.cfg.model.max_response_len)
    if metrics is not None:
        metrics.log(score_mean=mean, score_std=std)
    return mean, std


def train_kwargs(run, metrics, val_pairs=None) -> dict:
    """The settings every RM of the run trains with (Step 2's, also Step 4's re-learned ones)."""
    cfg = run.cfg
    return dict(lr=cfg.reward.rm_lr, batch_size=cfg.reward.rm_batch, epochs=cfg.reward.rm_epochs,
                max_grad_norm=cfg.run.max_grad_norm, micro_batch=cfg.scale.micro_batch, metrics=metrics,
                val_pairs=val_pairs, show=run.show)


def stage_reward(run, dest, metrics) -> None:
    """Step 2 in the pipeline: the RM from SFT on the train split of D, its held-out accuracy,
    normalised on SFT samples."""
    tokenizer = run.tokenizer()
    train, val, val_recs = human_pairs(run, tokenizer)
    rm = run.scorer(run.require("sft"), train=True)
    train_reward_model(rm, train, tokenizer.pad_token_id, seed=run.seeds.reward, desc="reward",
                       **train_kwargs(run, metrics, val))
    mean, std = normalize_on_sft_samples(run, rm, tokenizer)
    stats = {"val_accuracy_annotator": pairwise_accuracy(rm, val, tokenizer.pad_token_id)["accuracy"],
             "val_pairs": len(val), "score_mean": mean, "score_std": std}
    held_out = f"  held-out accuracy: {stats['val_accuracy_annotator']:.3f} vs the preference labels ({len(val)} pairs)"
    if run.cfg.data.builtin:  # also against the gold judge, on the pairs it does not call a tie
        gold_val = [{**r, "preference": task.gold_preference(r["instruction"], r["input"], r["output_1"],
                                                             r["output_2"])}
                    for r in val_recs if task.gold_score(r["instruction"], r["input"], r["output_1"])
                    != task.gold_score(r["instruction"], r["input"], r["output_2"])]
        stats.update(val_accuracy_gold=pairwise_accuracy(rm, to_pairs(run, tokenizer, gold_val),
                                                         tokenizer.pad_token_id)["accuracy"],
                     val_gold_pairs=len(gold_val))
        held_out += f", {stats['val_accuracy_gold']:.3f} vs gold ({len(gold_val)} non-tied pairs)"
    metrics.log(**stats)
    run.log(held_out)
    run.save_model(rm, tokenizer, dest)
