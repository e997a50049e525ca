"""Step 4, reward re-learning on policy (the paper's contribution).

  P = {(x, y_1..y_n)}: n samples per unlabelled instruction from the Step-3 policy,
      drawn once (`build_policy_samples`) and shared by both variants.
  Eq. 1:  L = -E_{D u D_hat}[log sigma(r(x, y_w) - r(x, y_l))] + lambda * L_M
  RLP-UML: D_hat = {},  lambda > 0, L_M = the multi-view information bottleneck (ib_loss.py)
  RLP-SPG: lambda = 0,  D_hat = synthetic preferences from P by self-consistency (spg.py)
"""
from __future__ import annotations

import random

import torch

import dist
import models
import reward
import spg
from ib_loss import MIBHeads, beta_schedule


def build_policy_samples(policy, tokenizer, records: list[dict], prompts: list[list[int]], n: int,
                         temperature: float, max_new_tokens: int, batch_size: int, seed: int,
                         show: bool = True) -> list[dict]:
    """Step 4: P, n outputs per instruction from the Step-3 policy (paper: n = 10, T = 1)."""
    device = next(policy.parameters()).device
    outputs = models.generate_texts(policy, tokenizer, prompts, n, temperature, max_new_tokens, batch_size,
                                    models.make_generator(device, seed), desc="sampling P", show=show)
    return [{"instruction": r["instruction"], "input": r["input"], "outputs": o} for r, o in zip(records, outputs)]


def uml_loss_fn(rm, heads: MIBHeads, tokenizer, samples: list[dict], prompts: list[list[int]], lam: float,
                batch_size: int, max_response_len: int, seed: int, total_steps: int, beta: float = 1.0):
    """Eq. 1's lambda * L_M on a fresh batch of P at every call: for each instruction, two
    distinct policy samples are the two views v_1 = (x, y_1), v_2 = (x, y_2). The SKL weight
    warms up from 1e-3 to `beta` (ib_loss.beta_schedule). The instructions of a step are drawn
    with the same generator on every rank; each rank computes L_M on a contiguous, even-sized
    block of them (the estimator's negatives are pairs of rows, ib_loss.partner_rows, so no pair
    straddles two ranks), weighted by its share: the same L_M for any number of processes."""
    rng = random.Random(seed + 1)  # not the stream that shuffles the pairs
    device = next(rm.parameters()).device
    pad = tokenizer.pad_token_id
    block = 2 * dist.world()  # every rank gets whole pairs of rows
    rows_per_step = min(batch_size, len(samples)) // block * block
    if rows_per_step < block:
        raise SystemExit(f"error: RLP-UML needs at least 2 instructions of P per process and step; --uml-batch "
                         f"is {batch_size}, |P| is {len(samples)}, processes: {dist.world()}")
    per_rank = rows_per_step // dist.world()
    mine = slice(dist.rank() * per_rank, (dist.rank() + 1) * per_rank)

    def extra_loss(step: int):
        views = []
        for i in rng.sample(range(len(samples)), rows_per_step):
            a, b = rng.sample(range(len(samples[i]["outputs"])), 2)
            views.append((i, samples[i]["outputs"][a], samples[i]["outputs"][b]))
        local = views[mine]
        rows = [i for i, _, _ in local]
        y1, y2 = [v[1] for v in local], [v[2] for v in local]
        p_ids, p_mask = models.left_pad([prompts[i] for i in rows] * 2, pad, device)
        r_ids, r_mask = models.right_pad(models.encode_responses(tokenizer, y1 + y2, max_response_len), pad, device)
        with models.autocast(device):
            h = models.last_token_hidden(rm, p_ids, p_mask, r_ids, r_mask)  # both views in one forward
        # the reparameterisation noise of every row, drawn as one process would (the same global RNG
        # state on every rank), of which this rank takes its rows: the same L_M for any number of ranks
        eps = [torch.randn(len(views), heads.latent, device=device)[mine] for _ in range(2)]
        loss, stats = heads(h[:len(rows)], h[len(rows):], beta=beta_schedule(step, total_steps, end=beta),
                            noise=(eps[0], eps[1]))
        share = len(rows) / len(views)
        keys = [k for k in stats if k != "mib_beta"]
        totals = dist.all_sum([stats[k] * share for k in keys]).tolist()  # logged values: global means
        return lam * loss * share, {**stats, **dict(zip(keys, totals))}

    return extra_loss


def relearn_uml(rm, tokenizer, pairs: list[reward.Pair], samples: list[dict], prompts: list[list[int]], *,
                lam: float, beta: float, heads_lr: float, latent: int, hidden: int, uml_batch: int, max_response_len: int,
                seed: int, train_kwargs: dict, kind: str = "mib") -> MIBHeads:
    """RLP-UML: Eq. 1 with D_hat = {} and lambda * L_M on P (`kind`: L_M or an ablation's loss,
    ib_loss.UML_LOSSES). Returns the heads (saved beside the RM)."""
    if any(len(s["outputs"]) < 2 for s in samples):
        raise ValueError("RLP-UML needs n >= 2 policy samples per instruction (two views)")
    torch.manual_seed(seed)
    heads = MIBHeads(rm.config.hidden_size, hidden, latent, kind).to(next(rm.parameters()).device)
    total = reward.num_steps(len(pairs), train_kwargs["batch_size"], train_kwargs["epochs"])
    extra = uml_loss_fn(rm, heads, tokenizer, samples, prompts, lam, uml_batch, max_response_len, seed, total, beta)
    reward.train_reward_model(rm, pairs, tokenizer.pad_token_id, seed=seed, extra_loss=extra,
                              extra_params=list(heads.parameters()), extra_lr=heads_lr, desc="rlp-uml reward", **train_kwargs)
    return heads


SYNTHETIC_LABELS = ("consistency", "reward", "rlaif")


def synthetic_preferences(rm_step2, tokenizer, samples: list[dict], prompts: list[list[int]], *, gamma: float,
                          max_response_len: int, batch_size: int, seed: int, cluster, labels: str = "consistency",
                          judge_pairs=None) -> tuple[list[dict], dict]:
    """RLP-SPG's D_hat: score every output of P with the Step-2 RM (it picks y_w inside the
    largest cluster), then keep the instructions whose confidence passes gamma (spg.py).
    `cluster(record)` -> the cluster labels of record["outputs"] (it may read the question too).
    `labels` picks the paper's Table 5 baselines instead: "reward" (the Step-2 RM ranks two
    random samples) or "rlaif" (`judge_pairs(records, first, second)`, the policy as a judge).
    Select-All is "consistency" with gamma = 0."""
    n = len(samples[0]["outputs"]) if samples else 0
    flat_prompts = [p for p, s in zip(prompts, samples) for _ in s["outputs"]]
    flat_outputs = [o for s in samples for o in s["outputs"]]
    scores = models.score_texts(rm_step2, tokenizer, flat_prompts, flat_outputs, max_response_len, batch_size)
    per_row, k = [], 0
    for s in samples:
        per_row.append(scores[k:k + len(s["outputs"])].tolist())
        k += len(s["outputs"])
    if labels == "consistency":
        # each rank clusters its shard of P (an NLI model is the costly part) and every rank gets
        # all the labels: the same clusters, hence the same pairs, on every rank
        clusters = dist.gather([cluster(samples[i]) for i in dist.shard(list(range(len(samples))))])
        pairs, stats = spg.synthesize(samples, per_row, gamma, seed, clusters)
    elif labels == "reward":
        text_score = {id(s): dict(zip(s["outputs"], row)) for s, row in zip(samples, per_row)}

        def by_reward(records, first, second):  # 1: first scores higher, 2: second, 0: a tie
            scores = [(text_score[id(r)][a], text_score[id(r)][b]) for r, a, b in zip(records, first, second)]
            return [1 if sa > sb else 2 if sb > sa else 0 for sa, sb in scores]
        pairs, stats = spg.pairs_by_labeler(samples, by_reward, seed)
    elif labels == "rlaif":
        pairs, stats = spg.pairs_by_labeler(samples, judge_pairs, seed)
    else:
        raise ValueError(f"unknown synthetic labels {labels!r}; one of {', '.join(SYNTHETIC_LABELS)}")
    stats["n"] = n
    stats["labels"] = labels
    return pairs, stats


def relearn_spg(rm, tokenizer, human_pairs: list[reward.Pair], synthetic: list[reward.Pair], *, seed: int,
                train_kwargs: dict) -> None:
    """RLP-SPG: Eq. 1 with lambda = 0 on D u D_hat."""
    reward.train_reward_model(rm, human_pairs + synthetic, tokenizer.pad_token_id, seed=seed,
                              desc="rlp-spg reward", **train_kwargs)
