"""Steps 3 and 5, policy optimisation: PPO with a per-token KL penalty against the SFT
reference, GAE, and clipped policy and value losses (InstructGPT / AlpacaFarm style).

One iteration (`train_ppo`, read top to bottom: the math, `rollout`, `update`, the loop):
  rollout   sample responses from the policy at temperature T (lm.sample)
  score     r(x, y) from the frozen RM on the last valid token
  shape     r_t = -beta * (log pi - log pi_ref) on every valid token, + r(x, y) on the last
  GAE       advantages and returns from the value model (initialised from the RM)
  update    several epochs of shuffled minibatches of the clipped objectives

Shapes: every per-token tensor is [batch, response_len]; `mask` is 1.0 on valid response
tokens (up to and including the first EOS), 0.0 after. "checklist N" in a comment is item N of
docs/ppo_checklist.md, the details of PPO for language models that are easy to get wrong.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

import lm
import task
from config import PPOConfig, Seeds
from plumbing import dist, lora
from plumbing.checkpoint import PPOCheckpoints
from plumbing.metrics import Metrics
from plumbing.sampling import make_generator


# ----------------------------------------------------------------------------- the math

def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(x * mask) / sum(mask) over the whole batch."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """masked_mean over the valid tokens of every rank's batch (all-reduced sums); with one
    process it is masked_mean."""
    if dist.world() == 1:
        return masked_mean(x, mask)
    total, count = dist.all_sum([(x * mask).sum().item(), mask.sum().item()]).tolist()
    return torch.tensor(total / max(count, 1.0), dtype=x.dtype, device=x.device)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std with statistics over valid tokens only (checklist 11); 0 on invalid tokens.
    shift_mean=False adds the mean back: only the scale changes (AlpacaFarm's reward whitening).
    Statistics are over the whole rollout: every rank's tokens (global, not per rank or minibatch)."""
    mean = global_masked_mean(x, mask)
    var = global_masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Step 3: r_t = -beta * (log pi(y_t) - log pi_ref(y_t)) on valid tokens, plus the RM score
    r(x, y) on each row's last valid token (AlpacaFarm's convention; TRL puts it one later).
    Unlike AlpacaFarm we do not clamp the KL term at >= 0: the estimator stays unbiased."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = mask.sum(-1).long() - 1  # index of the last valid token of each row
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last] += scores
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation, backwards in time:
    delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 after the last valid token),
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V. Both 0 on invalid tokens."""
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        adv[:, t] = next_adv
        next_value = values[:, t]
    returns = (adv + values) * mask
    return adv, returns


def token_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: float | None) -> torch.Tensor:
    """masked_mean, or sum(x * mask) / num_tokens when the mean is over a larger (global) batch
    of which this is a part: then the parts' values add up to the whole batch's mean."""
    return masked_mean(x, mask) if num_tokens is None else (x * mask).sum() / num_tokens


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float, num_tokens: float | None = None) -> torch.Tensor:
    """PPO clipped surrogate: masked mean of max(-A * rho, -A * clip(rho, 1 - eps, 1 + eps)),
    rho = exp(log pi - log pi_old). num_tokens: see token_mean."""
    ratio = torch.exp(logprobs - old_logprobs)
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range))
    return token_mean(loss, mask, num_tokens)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float, num_tokens: float | None = None) -> torch.Tensor:
    """Clipped value loss: 0.5 * masked mean of max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    return 0.5 * token_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask, num_tokens)


class KLController:
    """Fixed beta by default (AlpacaFarm); with `target`, the adaptive controller of
    Ziegler et al. 2019: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, measured_kl: float, n_steps: int) -> None:
        if self.target is not None:
            error = min(max(measured_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon


# ----------------------------------------------------------------------------- rollout

class TextReward:
    """A reward computed from the response text instead of a reward model: `score(records, texts)`
    -> one float per response. Stage ppo_gold uses the built-in task's gold judge this way (the
    ceiling a perfect RM would give); PPO treats it exactly like an RM's score."""

    def __init__(self, score: Callable[[list[dict], list[str]], list[float]]):
        self.score = score


def reward_scores(rm, tokenizer, p_ids, p_mask, r_ids, mask, records: list[dict] | None) -> torch.Tensor:
    """r(x, y) of each response: the RM's score on its last valid token, or a TextReward's score
    of its record and decoded text."""
    if isinstance(rm, TextReward):
        texts = lm.decode_responses(tokenizer, r_ids, mask)
        return torch.tensor(rm.score(records, texts), dtype=torch.float32, device=r_ids.device)
    return lm.sequence_scores(rm, p_ids, p_mask, r_ids, mask)


@torch.no_grad()
def rollout(policy, ref, rm, value, tokenizer, prompts: list[list[int]], cfg: PPOConfig, kl_coef: float,
            max_response_len: int, generator: torch.Generator, records: list[dict] | None = None) -> dict:
    """Sample, score and shape one batch (this rank's prompts); everything the update needs, no
    gradients. Reward and advantage whitening use statistics over every rank's rollouts.
    `rm` is a reward model, or a TextReward that scores the decoded texts of `records`' responses."""
    device = next(policy.parameters()).device
    for m in (policy, ref, value) + ((rm,) if isinstance(rm, torch.nn.Module) else ()):
        m.eval()
    p_ids, p_mask = lm.left_pad(prompts, tokenizer.pad_token_id, device)
    with lm.autocast(device):
        r_ids, gen_logprobs, mask = lm.sample(policy, p_ids, p_mask, max_response_len, cfg.temperature,
                                              tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        # Recomputed with a full forward, as the update will, so that the first ratio is 1.
        logprobs = lm.token_logprobs(lm.response_logits(policy, p_ids, p_mask, r_ids, mask), r_ids,
                                     cfg.temperature) * mask
        ref_logprobs = lm.token_logprobs(lm.response_logits(ref, p_ids, p_mask, r_ids, mask), r_ids,
                                         cfg.temperature) * mask
        scores = reward_scores(rm, tokenizer, p_ids, p_mask, r_ids, mask, records)
        values = lm.token_values(value, p_ids, p_mask, r_ids, mask) * mask
    has_eos = ((r_ids == tokenizer.eos_token_id).float() * mask).sum(-1) > 0
    rm_scores = scores.clone()
    if cfg.eos_penalty is not None:  # checklist 8: optional fixed score for responses that never end
        scores = torch.where(has_eos, scores, torch.full_like(scores, cfg.eos_penalty))
    rewards = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    if cfg.whiten_rewards:  # AlpacaFarm: scale only, the mean stays (it carries the signal)
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)  # returns were taken before whitening (checklist 10)
    return dict(p_ids=p_ids, p_mask=p_mask, r_ids=r_ids, mask=mask, logprobs=logprobs, ref_logprobs=ref_logprobs,
                values=values, advantages=advantages, returns=returns, rm_scores=rm_scores, has_eos=has_eos,
                gen_logprobs=gen_logprobs)


# ----------------------------------------------------------------------------- update

STATS = ["policy_loss", "value_loss", "clip_frac", "approx_kl", "entropy", "value_clip_frac", "first_ratio"]


def update(policy, value, optimizer, batch: dict, cfg: PPOConfig, rng: random.Random, max_grad_norm: float,
           micro_batch: int = 0) -> dict:
    """cfg.ppo_epochs passes over the rollout in shuffled minibatches of cfg.step_batch rollouts.
    Sizes are global: each rank takes step_batch / W of its own rollouts per minibatch, in
    micro-batches of `micro_batch`. Each micro-batch's loss is its share of the global
    minibatch's token mean and gradients are summed over ranks, so the update is the same for
    any micro-batching and number of processes (checklist 13). Logged values are global."""
    device = batch["p_ids"].device
    policy.train()
    value.train()
    n = len(batch["p_ids"])  # this rank's rollouts
    local_step = dist.per_rank(cfg.step_batch, "--step-batch")
    micro = dist.micro_size(local_step, micro_batch, "--step-batch")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums = dict.fromkeys(STATS + ["tokens", "first_tokens"], 0.0)
    minibatches = 0
    for epoch in range(cfg.ppo_epochs):
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n, local_step):
            rows = order[start:start + local_step]
            num_tokens = dist.all_sum(batch["mask"][rows].sum().item()).item()  # the global minibatch's
            optimizer.zero_grad(set_to_none=True)
            for chunk in dist.chunks(rows, micro):
                idx = torch.tensor(chunk, device=device)
                mb = {k: v[idx] for k, v in batch.items()}
                m = mb["mask"]
                with lm.autocast(device):
                    logits = lm.response_logits(policy, mb["p_ids"], mb["p_mask"], mb["r_ids"], m)
                    new_values = lm.token_values(value, mb["p_ids"], mb["p_mask"], mb["r_ids"], m)
                logprobs = lm.token_logprobs(logits, mb["r_ids"], cfg.temperature)
                pl = policy_loss(logprobs, mb["logprobs"], mb["advantages"], m, cfg.clip_range, num_tokens)
                vl = value_loss(new_values, mb["values"], mb["returns"], m, cfg.clip_range_value, num_tokens)
                (pl + cfg.vf_coef * vl).backward()
                add_stats(sums, mb, logits, logprobs, new_values, pl, vl, cfg, first=epoch == 0 and start == 0)
            dist.sum_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            minibatches += 1
    policy.eval()
    value.eval()
    return global_stats(sums, minibatches)


@torch.no_grad()
def add_stats(sums: dict, mb: dict, logits, logprobs, new_values, pl, vl, cfg: PPOConfig, first: bool) -> None:
    """Token sums of one micro-batch's statistics, divided by the global token count at the end;
    `first`: the first minibatch, before any step, where the ratio must be 1. The sums stay
    tensors (float64), so logging makes no host sync per micro-batch."""
    m = mb["mask"]
    log_ratio = (logprobs - mb["logprobs"]) * m
    ratio = log_ratio.exp()
    tok_sum = lambda x: (x * m).sum().double()  # noqa: E731
    sums["policy_loss"] += pl.detach().double()
    sums["value_loss"] += vl.detach().double()
    sums["clip_frac"] += tok_sum(((ratio - 1).abs() > cfg.clip_range).float())
    sums["approx_kl"] += tok_sum(0.5 * log_ratio ** 2)
    sums["entropy"] += tok_sum(lm.entropy(logits.detach(), cfg.temperature))
    sums["value_clip_frac"] += tok_sum(((new_values - mb["values"]).abs() > cfg.clip_range_value).float())
    sums["tokens"] += m.sum().double()
    if first:
        sums["first_ratio"] += tok_sum(ratio)
        sums["first_tokens"] += m.sum().double()


def global_stats(sums: dict, minibatches: int) -> dict:
    """The update's logged statistics over every rank: token means, and the losses' mean over
    minibatches (one reduction, one host sync)."""
    keys = STATS + ["tokens", "first_tokens"]
    local = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64).cpu() for k in keys])
    total = dict(zip(keys, dist.all_sum(local).tolist()))
    stats = {k: total[k] / max(total["tokens"], 1.0) for k in STATS}
    stats["policy_loss"] = total["policy_loss"] / minibatches  # already token means of each minibatch
    stats["value_loss"] = total["value_loss"] / minibatches
    stats["first_ratio"] = total["first_ratio"] / max(total["first_tokens"], 1.0)
    return stats


def rollout_stats(batch: dict, tokenizer, records: list[dict], cfg: PPOConfig, kl_coef: float,
                  gold: Callable[[dict, str], float] | None = None) -> dict:
    """Means over every rank's rollouts of the RM score, the sequence KL to the reference, the
    response length, the EOS rate and (built-in task) the gold score."""
    mask = batch["mask"]
    gold_sum = 0.0
    if gold is not None:
        texts = lm.decode_responses(tokenizer, batch["r_ids"], mask)
        gold_sum = sum(gold(r, t) for r, t in zip(records, texts))
    seq_kl = ((batch["logprobs"] - batch["ref_logprobs"]) * mask).sum(-1)
    sums = dist.all_sum([batch["rm_scores"].sum().item(), seq_kl.sum().item(), mask.sum().item(),
                         batch["has_eos"].float().sum().item(), gold_sum]) / cfg.rollout_batch
    score, kl_mean, response_len, eos_rate, gold_mean = sums.tolist()
    row = dict(score=score, kl=kl_mean, score_minus_kl=score - kl_coef * kl_mean, response_len=response_len,
               eos_rate=eos_rate,
               explained_variance=explained_variance(batch["values"], batch["returns"], mask))
    if gold is not None:
        row["gold"] = gold_mean
    return row


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid tokens of every rank (1 = perfect value model)."""
    var_r = global_masked_mean((returns - global_masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = global_masked_mean((diff - global_masked_mean(diff, mask)) ** 2, mask)
    return (1.0 - var_d / var_r.clamp(min=1e-8)).item()


# ----------------------------------------------------------------------------- the loop

@dataclass
class Loop:
    """What PPO carries from one iteration to the next besides the weights: all a resumed run
    needs (plumbing/checkpoint.py saves and restores it)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    kl: KLController
    batches: dist.Batches       # the global rollout batches' prompts, the same on every rank
    minibatch_rng: random.Random  # minibatch order: its own stream, so prompt order ignores N
    generator: torch.Generator  # sampling: a different seed on each rank


def train_ppo(policy, ref, rm, value, tokenizer, prompts: list[list[int]], records: list[dict], cfg: PPOConfig,
              seeds: Seeds, max_response_len: int, max_grad_norm: float, micro_batch: int = 0, log=None,
              checkpoints=None, gold: Callable[[dict, str], float] | None = None, desc: str = "ppo",
              show: bool = True) -> None:
    """Run cfg.ppo_iterations PPO iterations on the prompts (Step 3, and Step 5 with the re-learned
    RM). rollout_batch is global: each rank rolls out its shard of the batch's prompts.
    `gold(record, text)`, when given (built-in task), logs the gold score of every rollout.
    `log` (a PPOLog) writes each iteration's row and sample table; `checkpoints` (a
    plumbing.checkpoint.PPOCheckpoints) resumes from the latest checkpoint and saves new ones."""
    loop = start_loop(policy, ref, rm, value, len(prompts), cfg, seeds)
    start = checkpoints.resume(policy, value, loop) if checkpoints is not None else 0
    bar = tqdm(range(start, cfg.ppo_iterations), initial=start, total=cfg.ppo_iterations, desc=desc,
               disable=not show, leave=False)
    for it in bar:
        local = dist.shard(loop.batches.next())  # this rank's prompts of the global rollout batch
        recs = [records[i] for i in local]
        batch = rollout(policy, ref, rm, value, tokenizer, [prompts[i] for i in local], cfg, loop.kl.value,
                        max_response_len, loop.generator, recs)
        if log is not None:  # the policy that drew this iteration's rollouts, on fixed prompts
            log.sample_table(it, policy, ref, rm)
        lr = loop.optimizer.param_groups[0]["lr"]
        stats = update(policy, value, loop.optimizer, batch, cfg, loop.minibatch_rng, max_grad_norm, micro_batch)
        loop.scheduler.step()
        row = {**stats, "iteration": it, "kl_coef": loop.kl.value, "lr": lr,
               **rollout_stats(batch, tokenizer, recs, cfg, loop.kl.value, gold)}
        loop.kl.update(row["kl"], cfg.rollout_batch)  # the global KL: every rank keeps the same beta
        if log is not None:
            log.iteration(row, batch, recs, bar)
        if checkpoints is not None:
            checkpoints.save_if_due(it + 1, policy, value, loop)


def start_loop(policy, ref, rm, value, n_prompts: int, cfg: PPOConfig, seeds: Seeds) -> Loop:
    """Frozen reference and RM, the same weights on every rank, the optimizer and schedules."""
    for m in (ref,) + ((rm,) if isinstance(rm, torch.nn.Module) else ()):
        m.requires_grad_(False)  # frozen: no optimizer state, no gradients (checklist 15)
    dist.per_rank(cfg.rollout_batch, "--rollout-batch")
    dist.per_rank(cfg.step_batch, "--step-batch")
    dist.broadcast_parameters(policy)
    dist.broadcast_parameters(value)
    params = dist.trainable_parameters(policy, value)  # LoRA: adapters, heads
    optimizer = torch.optim.AdamW(params, lr=cfg.ppo_lr, eps=1e-5, weight_decay=0.0)  # Adam eps 1e-5 (checklist 14)
    # linear decay to 0 over the run, stepped once per rollout (AlpacaFarm decays too)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 - it / max(1, cfg.ppo_iterations))
    generator = make_generator(next(policy.parameters()).device, seeds.ppo)
    return Loop(optimizer, scheduler, KLController(cfg.kl_coef, cfg.adaptive_kl_target, cfg.kl_horizon),
                dist.Batches(n_prompts, cfg.rollout_batch, seeds.ppo), random.Random(seeds.ppo_minibatches),
                generator)


# ----------------------------------------------------------------------------- how the pipeline runs it

def run_ppo(run, rm_dir, dest, metrics, desc: str, reward=None) -> None:
    """Steps 3 and 5: PPO from SFT (also the frozen reference) against the RM in rm_dir; the value
    model starts from that RM with a zeroed head. `reward` (a TextReward) replaces the RM's score,
    with the value model still started from rm_dir (stage ppo_gold)."""
    cfg = run.cfg
    gold = task.gold if cfg.data.builtin else None  # the built-in task's judge, logged beside the reward
    tokenizer = run.tokenizer()
    sft_dir = run.require("sft")
    policy = run.policy(sft_dir, train=True)
    ref = lora.reference(policy) if cfg.scale.lora_rank else run.policy(sft_dir)  # LoRA: the policy, adapters off
    rm = reward if reward is not None else run.scorer(rm_dir)
    value = run.scorer(rm_dir, fresh_head=True, train=True)
    recs = run.records("unlabeled")
    prompts = run.prompts(tokenizer, recs)
    samples = Metrics(dest / "samples.jsonl" if run.main else None, tensorboard=metrics.tensorboard)
    log = PPOLog(metrics, samples, tokenizer, prompts, recs, cfg.ppo, run.seeds, cfg.model.max_response_len,
                 gold)
    checkpoints = PPOCheckpoints(dest / run.CHECKPOINTS, cfg.scale.checkpoint_every, cfg.scale.checkpoint_keep,
                                 cfg.ppo.ppo_iterations, [metrics, samples], desc)
    train_ppo(policy, ref, rm, value, tokenizer, prompts, recs, cfg.ppo, run.seeds, cfg.model.max_response_len,
              cfg.run.max_grad_norm, cfg.scale.micro_batch, log=log, checkpoints=checkpoints, gold=gold,
              desc=desc, show=run.show)
    samples.close()
    run.save_model(policy, tokenizer, dest / "policy")
    run.save_model(value, tokenizer, dest / "value")


def stage_ppo(run, dest, metrics) -> None:
    """Step 3: PPO from SFT against the Step-2 RM."""
    run_ppo(run, run.require("reward"), dest, metrics, "ppo")


def stage_ppo_gold(run, dest, metrics) -> None:
    """PPO exactly as Step 3, with the gold judge's score in place of the Step-2 RM's (built-in
    task only): the ceiling a perfect RM would give, against which eval measures how much of it
    each learned RM recovers. The gold score is normalised like every RM (mean 0, std 1 on the
    Step-1 SFT samples, checklist 7), so the KL coefficient means the same; the value model starts
    from the Step-2 RM, as Step 3's does."""
    gold = task.gold
    prefs = run.read("prefs", "prefs.jsonl")
    sft_gold = [gold(r, r[k]) for r in prefs for k in ("output_1", "output_2")]
    mean, std = statistics.fmean(sft_gold), max(statistics.pstdev(sft_gold), 1e-6)
    reward = TextReward(lambda records, outs: [(gold(r, t) - mean) / std for r, t in zip(records, outs)])
    run_ppo(run, run.require("reward"), dest, metrics, "ppo-gold", reward=reward)
    metrics.log(gold_mean=mean, gold_std=std)  # after PPO, which starts its log over when it is not resuming


# ----------------------------------------------------------------------------- logging (not part of the algorithm)

SAMPLE_PROMPTS = 4  # fixed prompts (the first of the set) whose rollouts samples.jsonl logs every iteration (ours)


class PPOLog:
    """Each iteration's row in metrics.jsonl (with three of its rollouts as text), and its sample
    table in samples.jsonl: one rollout of the current policy for each of the first
    SAMPLE_PROMPTS prompts, the same prompts at every iteration."""

    def __init__(self, metrics, samples, tokenizer, prompts, records, cfg: PPOConfig, seeds: Seeds,
                 max_response_len: int, gold=None):
        self.metrics, self.samples, self.tokenizer, self.prompts, self.records = metrics, samples, tokenizer, prompts, \
            records
        self.cfg, self.seeds, self.max_response_len, self.gold = cfg, seeds, max_response_len, gold
        self.indices = list(range(min(SAMPLE_PROMPTS, len(prompts))))

    def iteration(self, row: dict, batch: dict, records: list[dict], bar=None) -> None:
        """The iteration's row, with three of its rollouts as text; its numbers on the progress bar."""
        texts = lm.decode_responses(self.tokenizer, batch["r_ids"][:3], batch["mask"][:3])
        self.metrics.log(**row, samples=[f"{r['instruction']} {r['input']} -> {t}" for r, t in zip(records, texts)])
        if bar is not None:
            bar.set_postfix(score=f"{row['score']:.2f}", kl=f"{row['kl']:.2f}",
                            **({"gold": f"{row['gold']:.3f}"} if "gold" in row else {}))

    def sample_table(self, iteration: int, policy, ref, rm) -> None:
        if self.samples is None:  # no sample table asked for
            return
        self.samples.log_rows(sample_table(policy, ref, rm, self.tokenizer, self.prompts, self.records, self.indices,
                                           self.cfg, self.seeds.ppo_sample_tables + iteration, iteration,
                                           self.max_response_len, self.gold), "samples")


@torch.no_grad()
def sample_table(policy, ref, rm, tokenizer, prompts: list[list[int]], records: list[dict], indices: list[int],
                 cfg: PPOConfig, seed: int, iteration: int, max_response_len: int,
                 gold: Callable[[dict, str], float] | None = None) -> list[dict]:
    """The sample table of one iteration: one rollout of the current policy for each of the
    fixed prompts `indices`, at the rollout temperature, with its RM score, gold score (when
    there is a gold judge) and sequence KL to the reference. It samples with a generator of its
    own, seeded from the iteration and the same on every rank: the training's RNG streams are
    untouched, so logging it changes no number of the training, and a resumed run logs the same
    rows. Every rank computes it (under --fsdp each forward is a collective); rank 0 writes it."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(seed)
    p_ids, p_mask = lm.left_pad([prompts[i] for i in indices], tokenizer.pad_token_id, device)
    with lm.autocast(device):
        r_ids, _, mask = lm.sample(policy, p_ids, p_mask, max_response_len, cfg.temperature,
                                   tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        logprobs = lm.token_logprobs(lm.response_logits(policy, p_ids, p_mask, r_ids, mask), r_ids, cfg.temperature)
        ref_logprobs = lm.token_logprobs(lm.response_logits(ref, p_ids, p_mask, r_ids, mask), r_ids,
                                         cfg.temperature)
        scores = reward_scores(rm, tokenizer, p_ids, p_mask, r_ids, mask, [records[i] for i in indices])
    seq_kl = ((logprobs - ref_logprobs) * mask).sum(-1)  # as the rollouts' logged KL
    rows = []
    for i, text, score, kl in zip(indices, lm.decode_responses(tokenizer, r_ids, mask), scores.tolist(),
                                  seq_kl.tolist()):
        rec = records[i]
        row = {"iteration": iteration, "prompt": i, "instruction": rec["instruction"], "input": rec["input"],
               "response": text, "score": score}
        if gold is not None:
            row["gold"] = gold(rec, text)
        rows.append({**row, "kl": kl})
    return rows
