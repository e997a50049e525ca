"""Steps 3 and 5, policy optimisation: PPO with a per-token KL penalty against the SFT
reference, GAE, and clipped policy and value losses (InstructGPT / AlpacaFarm style).

One iteration:
  rollout   sample responses from the policy at temperature T (models.sample)
  score     r(x, y) from the frozen RM on the last valid token
  shape     r_t = -beta * (log pi - log pi_ref) on every valid token, + r(x, y) on the last
  GAE       advantages and returns from the value model (initialised from the RM)
  update    several epochs of shuffled minibatches of the clipped objectives

Shapes: every per-token tensor is [batch, response_len]; `mask` is 1.0 on valid response
tokens (up to and including the first EOS), 0.0 after.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

import checkpoint
import dist
import models
from models import autocast


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
    """(x - mean) / std with statistics over valid tokens only (STYLE.md 11); 0 on invalid tokens.
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


# ----------------------------------------------------------------------------- the loop

@dataclass
class PPOConfig:
    iterations: int
    rollout_batch: int
    step_batch: int
    ppo_epochs: int
    lr: float
    kl_coef: float
    kl_target: float | None
    kl_horizon: int
    clip_range: float
    clip_range_value: float
    vf_coef: float
    gamma: float
    lam: float
    temperature: float
    max_response_len: int
    max_grad_norm: float
    whiten_rewards: bool
    no_eos_penalty: float | None
    seed: int
    micro_batch: int = 0  # rollouts per forward pass on one process in the update (0 = the whole minibatch)
    checkpoint_every: int = 0  # iterations between resumable checkpoints (0 = none)
    checkpoint_keep: int = 2  # checkpoints kept on disk


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
        texts = models.decode_responses(tokenizer, r_ids, mask)
        return torch.tensor(rm.score(records, texts), dtype=torch.float32, device=r_ids.device)
    return models.sequence_scores(rm, p_ids, p_mask, r_ids, mask)


@torch.no_grad()
def rollout(policy, ref, rm, value, tokenizer, prompts: list[list[int]], cfg: PPOConfig, kl_coef: float,
            generator: torch.Generator, records: list[dict] | None = None) -> dict:
    """Sample, score and shape one batch (this rank's prompts); everything the update needs, no
    gradients. Reward and advantage whitening use statistics over every rank's rollouts.
    `rm` is a reward model, or a TextReward that scores the decoded texts of `records`' responses."""
    device = next(policy.parameters()).device
    for m in (policy, ref, value) + ((rm,) if isinstance(rm, torch.nn.Module) else ()):
        m.eval()
    p_ids, p_mask = models.left_pad(prompts, tokenizer.pad_token_id, device)
    with autocast(device):
        r_ids, gen_logprobs, mask = models.sample(policy, p_ids, p_mask, cfg.max_response_len, cfg.temperature,
                                                  tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        # Recomputed with a full forward, as the update will, so that the first ratio is 1.
        logprobs = models.token_logprobs(models.response_logits(policy, p_ids, p_mask, r_ids, mask), r_ids,
                                         cfg.temperature) * mask
        ref_logprobs = models.token_logprobs(models.response_logits(ref, p_ids, p_mask, r_ids, mask), r_ids,
                                             cfg.temperature) * mask
        scores = reward_scores(rm, tokenizer, p_ids, p_mask, r_ids, mask, records)
        values = models.token_values(value, p_ids, p_mask, r_ids, mask) * mask
    has_eos = ((r_ids == tokenizer.eos_token_id).float() * mask).sum(-1) > 0
    rm_scores = scores.clone()
    if cfg.no_eos_penalty is not None:  # STYLE.md 8: optional fixed score for responses that never end
        scores = torch.where(has_eos, scores, torch.full_like(scores, cfg.no_eos_penalty))
    rewards = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    if cfg.whiten_rewards:  # AlpacaFarm: scale only, the mean stays (it carries the signal)
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)  # returns were taken before whitening (STYLE.md 10)
    return dict(p_ids=p_ids, p_mask=p_mask, r_ids=r_ids, mask=mask, logprobs=logprobs, ref_logprobs=ref_logprobs,
                values=values, advantages=advantages, returns=returns, rm_scores=rm_scores, has_eos=has_eos,
                gen_logprobs=gen_logprobs)


STATS = ["policy_loss", "value_loss", "clip_frac", "approx_kl", "entropy", "value_clip_frac", "first_ratio"]


def update(policy, value, optimizer, batch: dict, cfg: PPOConfig, rng: random.Random) -> dict:
    """cfg.ppo_epochs passes over the rollout in shuffled minibatches of cfg.step_batch rollouts.
    Sizes are global: each rank takes step_batch / W of its own rollouts per minibatch, in
    micro-batches of cfg.micro_batch. Each micro-batch's loss is its share of the global
    minibatch's token mean and gradients are summed over ranks, so the update is the same for
    any micro-batching and number of processes (STYLE.md 13). Logged values are global."""
    device = batch["p_ids"].device
    policy.train()
    value.train()
    n = len(batch["p_ids"])  # this rank's rollouts
    local_step = dist.per_rank(cfg.step_batch, "--step-batch")
    micro = dist.micro_size(local_step, cfg.micro_batch, "--step-batch")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums = dict.fromkeys(STATS, 0.0)
    tokens = first_tokens = 0.0
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
                with autocast(device):
                    logits = models.response_logits(policy, mb["p_ids"], mb["p_mask"], mb["r_ids"], m)
                    new_values = models.token_values(value, mb["p_ids"], mb["p_mask"], mb["r_ids"], m)
                logprobs = models.token_logprobs(logits, mb["r_ids"], cfg.temperature)
                pl = policy_loss(logprobs, mb["logprobs"], mb["advantages"], m, cfg.clip_range, num_tokens)
                vl = value_loss(new_values, mb["values"], mb["returns"], m, cfg.clip_range_value, num_tokens)
                (pl + cfg.vf_coef * vl).backward()
                with torch.no_grad():  # token sums, divided by the global token count at the end
                    log_ratio = (logprobs - mb["logprobs"]) * m
                    ratio = log_ratio.exp()
                    tok_sum = lambda x: (x * m).sum().item()
                    sums["policy_loss"] += pl.item()
                    sums["value_loss"] += vl.item()
                    sums["clip_frac"] += tok_sum(((ratio - 1).abs() > cfg.clip_range).float())
                    sums["approx_kl"] += tok_sum(0.5 * log_ratio ** 2)
                    sums["entropy"] += tok_sum(models.entropy(logits.detach(), cfg.temperature))
                    sums["value_clip_frac"] += tok_sum(((new_values - mb["values"]).abs() >
                                                        cfg.clip_range_value).float())
                    tokens += m.sum().item()
                    if epoch == 0 and start == 0:  # the first minibatch, before any step: ratio must be 1
                        sums["first_ratio"] += tok_sum(ratio)
                        first_tokens += m.sum().item()
            dist.sum_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            minibatches += 1
    policy.eval()
    value.eval()
    total = dict(zip(STATS + ["tokens", "first_tokens"],
                     dist.all_sum([sums[k] for k in STATS] + [tokens, first_tokens]).tolist()))
    stats = {k: total[k] / max(total["tokens"], 1.0) for k in STATS}
    stats["policy_loss"] = total["policy_loss"] / minibatches  # already token means of each minibatch
    stats["value_loss"] = total["value_loss"] / minibatches
    stats["first_ratio"] = total["first_ratio"] / max(total["first_tokens"], 1.0)
    return stats


SAMPLE_PROMPTS = 4  # fixed prompts (the first of the set) whose rollouts samples.jsonl logs every iteration (ours)
SAMPLE_SEED = 7_000_000  # their sampling stream: seed + SAMPLE_SEED + iteration (ours; any seed of its own)


@torch.no_grad()
def sample_table(policy, ref, rm, tokenizer, prompts: list[list[int]], records: list[dict], indices: list[int],
                 cfg: PPOConfig, iteration: int, gold: Callable[[dict, str], float] | None = None) -> list[dict]:
    """The sample table of one iteration: one rollout of the current policy for each of the
    fixed prompts `indices`, at the rollout temperature, with its RM score, gold score (when
    there is a gold judge) and sequence KL to the reference. It samples with a generator of its
    own, seeded from the iteration and the same on every rank: the training's RNG streams are
    untouched, so logging it changes no number of the training, and a resumed run logs the same
    rows. No collective: every rank may compute it (rank 0 writes it)."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(cfg.seed + SAMPLE_SEED + iteration)
    p_ids, p_mask = models.left_pad([prompts[i] for i in indices], tokenizer.pad_token_id, device)
    with autocast(device):
        r_ids, _, mask = models.sample(policy, p_ids, p_mask, cfg.max_response_len, cfg.temperature,
                                       tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        logprobs = models.token_logprobs(models.response_logits(policy, p_ids, p_mask, r_ids, mask), r_ids,
                                         cfg.temperature)
        ref_logprobs = models.token_logprobs(models.response_logits(ref, p_ids, p_mask, r_ids, mask), r_ids,
                                             cfg.temperature)
        scores = reward_scores(rm, tokenizer, p_ids, p_mask, r_ids, mask, [records[i] for i in indices])
    seq_kl = ((logprobs - ref_logprobs) * mask).sum(-1)  # as the rollouts' logged KL
    rows = []
    for i, text, score, kl in zip(indices, models.decode_responses(tokenizer, r_ids, mask), scores.tolist(),
                                  seq_kl.tolist()):
        rec = records[i]
        row = {"iteration": iteration, "prompt": i, "instruction": rec["instruction"], "input": rec["input"],
               "response": text, "score": score}
        if gold is not None:
            row["gold"] = gold(rec, text)
        rows.append({**row, "kl": kl})
    return rows


def train_ppo(policy, ref, rm, value, tokenizer, prompts: list[list[int]], records: list[dict], cfg: PPOConfig,
              metrics=None, gold: Callable[[dict, str], float] | None = None, desc: str = "ppo",
              show: bool = True, checkpoint_dir=None, samples=None) -> KLController:
    """Run cfg.iterations PPO iterations on the prompts (Step 3, and Step 5 with the re-learned RM).
    `gold(record, text)`, when given (built-in task), logs the gold score of every rollout.
    rollout_batch is global: each rank rolls out its shard of the batch's prompts. With
    `checkpoint_dir`, a resumable checkpoint is saved every cfg.checkpoint_every iterations and
    the loop resumes from the latest one found there. `samples` (a data.Metrics on samples.jsonl)
    gets each iteration's `sample_table` for the first SAMPLE_PROMPTS prompts."""
    device = next(policy.parameters()).device
    for m in (ref,) + ((rm,) if isinstance(rm, torch.nn.Module) else ()):
        m.requires_grad_(False)  # frozen: no optimizer state, no gradients (STYLE.md 15)
    dist.per_rank(cfg.rollout_batch, "--rollout-batch")
    dist.per_rank(cfg.step_batch, "--step-batch")
    dist.broadcast_parameters(policy)
    dist.broadcast_parameters(value)
    params = [p for p in list(policy.parameters()) + list(value.parameters()) if p.requires_grad]  # LoRA: adapters, heads
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, eps=1e-5, weight_decay=0.0)  # Adam eps 1e-5 (STYLE.md 14)
    # linear decay to 0 over the run, stepped once per rollout (AlpacaFarm decays too)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 - it / max(1, cfg.iterations))
    kl = KLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    batches = dist.Batches(len(prompts), cfg.rollout_batch, cfg.seed)  # the same on every rank
    shuffle_rng = random.Random(cfg.seed + 1)  # minibatch order: its own stream, so prompt order ignores N
    generator = models.make_generator(device, cfg.seed)  # sampling: a different seed on each rank
    sample_prompts = list(range(min(SAMPLE_PROMPTS, len(prompts))))  # the same prompts every iteration

    state = checkpoint.TrainState(policy, value, optimizer)  # weights and optimizer: sharded under --fsdp

    def save_checkpoint(next_iteration: int) -> None:
        shared = {"iteration": next_iteration, **state.plain(), "scheduler": sched.state_dict(), "kl_coef": kl.value,
                  "batches": batches.state_dict(), "shuffle_rng": shuffle_rng.getstate(),
                  "metrics_bytes": metrics.size() if metrics is not None else 0,
                  "samples_bytes": samples.size() if samples is not None else 0}
        own = {"generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
        checkpoint.save(checkpoint_dir, next_iteration, shared, own, cfg.checkpoint_keep, sharded=state.sharded())

    start = 0
    found = None
    if checkpoint_dir is not None:  # rank 0 decides, so that every rank resumes from the same one
        found = dist.broadcast_object(checkpoint.latest(checkpoint_dir) if dist.is_main() else None)
    if found is not None:
        shared, own = checkpoint.load(found)
        state.load(shared, found)
        sched.load_state_dict(shared["scheduler"])
        kl.value = shared["kl_coef"]
        batches.load_state_dict(shared["batches"])
        shuffle_rng.setstate(shared["shuffle_rng"])
        generator.set_state(own["generator"])
        torch.set_rng_state(own["torch_rng"])
        start = shared["iteration"]
        if metrics is not None:
            metrics.truncate(shared["metrics_bytes"])  # rows logged after the checkpoint are redone
        if samples is not None:
            samples.truncate(shared.get("samples_bytes", 0))  # (a checkpoint from before samples.jsonl: 0)
        del shared, own  # no second copy of the weights kept
        if dist.is_main():  # also with --quiet: a resumed run says so
            print(f"  resuming {desc} from {found} (iteration {start} of {cfg.iterations})", flush=True)
    elif metrics is not None and checkpoint_dir is not None:
        metrics.truncate(0)  # a killed attempt with no checkpoint: start the log over
    if found is None and samples is not None and checkpoint_dir is not None:
        samples.truncate(0)

    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc=desc, disable=not show,
               leave=False)
    for it in bar:
        idx = batches.next()
        local = dist.shard(idx)  # this rank's prompts of the global rollout batch
        batch = rollout(policy, ref, rm, value, tokenizer, [prompts[i] for i in local], cfg, kl.value, generator,
                        records=[records[i] for i in local])
        if samples is not None:  # the policy that drew this iteration's rollouts, on the fixed prompts
            samples.log_rows(sample_table(policy, ref, rm, tokenizer, prompts, records, sample_prompts, cfg, it,
                                          gold), "samples")
        lr = optimizer.param_groups[0]["lr"]
        row = update(policy, value, optimizer, batch, cfg, shuffle_rng)
        sched.step()
        mask = batch["mask"]
        texts = models.decode_responses(tokenizer, batch["r_ids"], mask)
        gold_sum = sum(gold(records[i], t) for i, t in zip(local, texts)) if gold is not None else 0.0
        seq_kl = ((batch["logprobs"] - batch["ref_logprobs"]) * mask).sum(-1)
        sums = dist.all_sum([batch["rm_scores"].sum().item(), seq_kl.sum().item(), mask.sum().item(),
                             batch["has_eos"].float().sum().item(), gold_sum]) / len(idx)
        score, kl_mean, response_len, eos_rate, gold_mean = sums.tolist()
        row.update(iteration=it, kl_coef=kl.value, lr=lr, score=score, kl=kl_mean,
                   score_minus_kl=score - kl.value * kl_mean, response_len=response_len, eos_rate=eos_rate,
                   explained_variance=explained_variance(batch["values"], batch["returns"], mask))
        if gold is not None:
            row["gold"] = gold_mean
        kl.update(kl_mean, cfg.rollout_batch)  # the global KL: every rank keeps the same beta
        if metrics is not None:
            metrics.log(**row, samples=[f"{records[i]['instruction']} {records[i]['input']} -> {t}"
                                        for i, t in zip(local[:3], texts[:3])])
        bar.set_postfix(score=f"{score:.2f}", kl=f"{kl_mean:.2f}",
                        **({"gold": f"{gold_mean:.3f}"} if gold is not None else {}))
        if checkpoint_dir is not None and cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 \
                and it + 1 < cfg.iterations:
            save_checkpoint(it + 1)
    return kl


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over valid tokens of every rank (1 = perfect value model)."""
    var_r = global_masked_mean((returns - global_masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = global_masked_mean((diff - global_masked_mean(diff, mask)) ** 2, mask)
    return (1.0 - var_d / var_r.clamp(min=1e-8)).item()
