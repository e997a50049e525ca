"""Steps 4 and 5, reward re-learning on policy (the paper's contribution), and the whole recipe
around it: which samples, which pairs, where the re-learned RM starts, how it is normalised.

  P = {(x, y_1..y_n)}: n samples per unlabelled instruction from the Step-3 policy,
      drawn once (`stage_samples`) and shared by both variants.
  Eq. 1:  L = -E_{D u D_hat}[log sigma(r(x, y_w) - r(x, y_l))] + lambda * L_M
  RLP-UML: D_hat = {},  lambda > 0, L_M = the multi-view information bottleneck (ib_loss.py)
  RLP-SPG: lambda = 0,  D_hat = synthetic preferences from P by self-consistency (spg.py)
  Step 5:  PPO again from SFT (reference still SFT) against the re-learned RM (ppo.run_ppo).

The choices the paper leaves open, made here (each a flag, config.RLPConfig): the re-learned RM
starts from the SFT weights, as the Step-2 RM did (`--rlp-init`); it trains on the same train
split of D as Step 2, with Step 2's settings; it is normalised on the same SFT samples as the
Step-2 RM, so the KL coefficient of Step 5 means what it meant in Step 3.
"""
from __future__ import annotations

import random

import torch

import lm
import reward
import spg
from ib_loss import MIBHeads, beta_schedule
from plumbing import dist
from plumbing.sampling import generate_texts, make_generator, score_texts


# ----------------------------------------------------------------------------- P

def build_policy_samples(policy, tokenizer, records: list[dict], prompts: list[list[int]], n: int,
                         temperature: float, max_new_tokens: int, batch_size: int, seed: int,
                         show: bool = True) -> list[dict]:
    """Step 4: P, n outputs per instruction from the Step-3 policy (paper: n = 10, T = 1)."""
    device = next(policy.parameters()).device
    outputs = generate_texts(policy, tokenizer, prompts, n, temperature, max_new_tokens, batch_size,
                             make_generator(device, seed), desc="sampling P", show=show)
    return [{"instruction": r["instruction"], "input": r["input"], "outputs": o} for r, o in zip(records, outputs)]


def new_rm(run):
    """The RM to re-learn (--rlp-init): from the SFT weights, as Step 2 started (ours), or from the
    Step-2 RM. Trained raw, then normalised afterwards like Step 2's."""
    rm = run.scorer(run.require("sft" if run.cfg.rlp.rlp_init == "sft" else "reward"), train=True)
    rm.config.score_mean, rm.config.score_std = 0.0, 1.0
    return rm


# ----------------------------------------------------------------------------- RLP-UML

def uml_loss_fn(rm, heads: MIBHeads, tokenizer, samples: list[dict], prompts: list[list[int]], lam: float,
                batch_size: int, max_response_len: int, seed: int, total_steps: int, beta: float = 1.0):
    """Eq. 1's lambda * L_M on a fresh batch of P at every call: for each instruction, two
    distinct policy samples are the two views v_1 = (x, y_1), v_2 = (x, y_2). The SKL weight
    warms up from 1e-3 to `beta` (ib_loss.beta_schedule). The instructions of a step are drawn
    with the same generator (`seed`) on every rank; each rank computes L_M on a contiguous,
    even-sized block of them (the estimator's negatives are pairs of rows, ib_loss.partner_rows,
    so no pair straddles two ranks), weighted by its share: the same L_M for any number of processes."""
    rng = random.Random(seed)
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
        p_ids, p_mask = lm.left_pad([prompts[i] for i in rows] * 2, pad, device)
        r_ids, r_mask = lm.right_pad(lm.encode_responses(tokenizer, y1 + y2, max_response_len), pad, device)
        with lm.autocast(device):
            h = lm.last_token_hidden(rm, p_ids, p_mask, r_ids, r_mask)  # both views in one forward
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
                lam: float, beta: float, heads_lr: float, latent: int, hidden: int, uml_batch: int,
                max_response_len: int, seed: int, views_seed: int, train_kwargs: dict, kind: str = "mib") -> MIBHeads:
    """RLP-UML: Eq. 1 with D_hat = {} and lambda * L_M on P (`kind`: L_M, or one of the paper's
    Table 4 alternatives, extras/ablations.py). Returns the heads (saved beside the RM)."""
    if any(len(s["outputs"]) < 2 for s in samples):
        raise ValueError("RLP-UML needs n >= 2 policy samples per instruction (two views)")
    torch.manual_seed(seed)
    if kind == "mib":
        heads = MIBHeads(rm.config.hidden_size, hidden, latent)
    else:
        from extras.ablations import RepresentationHeads
        heads = RepresentationHeads(rm.config.hidden_size, hidden, latent, kind)
    heads = heads.to(next(rm.parameters()).device)
    total = reward.num_steps(len(pairs), train_kwargs["batch_size"], train_kwargs["epochs"])
    extra = uml_loss_fn(rm, heads, tokenizer, samples, prompts, lam, uml_batch, max_response_len, views_seed, total,
                        beta)
    reward.train_reward_model(rm, pairs, tokenizer.pad_token_id, seed=seed, extra_loss=extra,
                              extra_params=list(heads.parameters()), extra_lr=heads_lr, desc="rlp-uml reward",
                              **train_kwargs)
    return heads


# ----------------------------------------------------------------------------- RLP-SPG

def synthetic_preferences(samples: list[dict], scores: list[list[float]], *, gamma: float, seed: int,
                          cluster) -> tuple[list[dict], dict]:
    """RLP-SPG's D_hat: cluster each instruction's outputs (`cluster(record)` -> the cluster labels
    of record["outputs"]; it may read the question too), keep the instructions whose confidence
    passes gamma, and pair the best-scored output of the largest cluster (`scores`: the Step-2 RM's,
    `score_all`) with one from another cluster (spg.synthesize)."""
    # each rank clusters its shard of P (an NLI model is the costly part) and every rank gets all the
    # labels: the same clusters, hence the same pairs, on every rank
    clusters = dist.gather([cluster(samples[i]) for i in dist.shard(list(range(len(samples))))])
    pairs, stats = spg.synthesize(samples, scores, gamma, seed, clusters)
    return pairs, {**stats, "n": len(samples[0]["outputs"]) if samples else 0, "labels": "consistency"}


def score_all(rm, tokenizer, samples: list[dict], prompts, max_response_len: int, batch_size: int):
    """The RM's score of every output of P, one list per instruction."""
    flat_prompts = [p for p, s in zip(prompts, samples) for _ in s["outputs"]]
    flat_outputs = [o for s in samples for o in s["outputs"]]
    scores = score_texts(rm, tokenizer, flat_prompts, flat_outputs, max_response_len, batch_size)
    per_row, k = [], 0
    for s in samples:
        per_row.append(scores[k:k + len(s["outputs"])].tolist())
        k += len(s["outputs"])
    return per_row


def relearn_spg(rm, tokenizer, human_pairs: list[reward.Pair], synthetic: list[reward.Pair], *, seed: int,
                train_kwargs: dict) -> None:
    """RLP-SPG: Eq. 1 with lambda = 0 on D u D_hat."""
    reward.train_reward_model(rm, human_pairs + synthetic, tokenizer.pad_token_id, seed=seed,
                              desc="rlp-spg reward", **train_kwargs)


def clusterer(run):
    """--spg-cluster: a record of P -> its outputs' cluster labels (spg.py). exact: equal answers
    (the built-in task's normalised answer, or for your own data the text with case and spacing
    ignored); nli: bidirectional entailment (paper); embedding: cosine of sentence embeddings. The
    last two read each answer after its question with --spg-condition-on-question on."""
    import task
    cfg = run.cfg.rlp
    if cfg.spg_cluster == "exact":
        if run.cfg.data.builtin:  # the answer as the gold judge reads it: "0237" and "237" differ for Sort
            return lambda rec: spg.cluster_by_key(rec["outputs"], lambda o: task.normalize(o, rec["instruction"]))
        return lambda rec: spg.cluster_by_key(rec["outputs"], lambda text: " ".join(text.split()).casefold())
    from extras import similarity
    from plumbing import models
    question = spg.question_of if cfg.spg_condition_on_question == "on" else (lambda rec: None)
    if cfg.spg_cluster == "nli":
        with models.loading("--nli-model", cfg.nli_model):
            entails = similarity.NLIEntailment(cfg.nli_model, run.device)
        return lambda rec: spg.cluster_by_entailment(rec["outputs"], entails, question(rec))
    with models.loading("--embedding-model", cfg.embedding_model or "(all-MiniLM-L6-v2)"):
        embed = similarity.SentenceEmbedder(cfg.embedding_model or None, run.device)
    return lambda rec: spg.cluster_by_embedding(rec["outputs"], embed, cfg.embedding_threshold, question(rec))


# ----------------------------------------------------------------------------- how the pipeline runs them

def stage_samples(run, dest, metrics) -> None:
    """Step 4, first half: the policy sample set P, drawn once and shared by UML and SPG."""
    cfg = run.cfg
    tokenizer = run.tokenizer()
    policy = run.policy(run.require("ppo") / "policy")
    recs = run.records("unlabeled")
    samples = build_policy_samples(policy, tokenizer, recs, run.prompts(tokenizer, recs), cfg.rlp.rlp_n,
                                   cfg.rlp.rlp_temperature, cfg.model.max_response_len, cfg.model.gen_batch,
                                   run.seeds.rlp_samples, show=run.show)
    run.write_records(dest / "P.jsonl", samples)
    metrics.log(instructions=len(samples), n=cfg.rlp.rlp_n)


def stage_uml(run, dest, metrics) -> None:
    """Step 4, RLP-UML: the RM re-learned on D with lambda * L_M on P; its heads saved beside it."""
    from safetensors.torch import save_file

    from plumbing import data
    cfg = run.cfg.rlp
    tokenizer = run.tokenizer()
    samples = run.read("rlp_samples", "P.jsonl", data.SAMPLES)
    train, val, _ = reward.human_pairs(run, tokenizer)
    rm = new_rm(run)
    heads = relearn_uml(rm, tokenizer, train, samples, run.prompts(tokenizer, samples), lam=cfg.uml_lambda,
                        beta=cfg.uml_beta, heads_lr=cfg.uml_lr, latent=cfg.uml_latent, hidden=cfg.uml_hidden,
                        uml_batch=cfg.uml_batch, max_response_len=run.cfg.model.max_response_len,
                        seed=run.seeds.uml, views_seed=run.seeds.uml_views,
                        train_kwargs=reward.train_kwargs(run, metrics, val), kind=cfg.uml_loss)
    reward.normalize_on_sft_samples(run, rm, tokenizer, metrics)
    run.save_model(rm, tokenizer, dest)
    if run.main:
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(dest / "uml_heads.safetensors"))
    run.write_json(dest / "uml_heads.json", heads.config())


def stage_spg(run, dest, metrics) -> None:
    """Step 4, RLP-SPG: synthetic pairs from P by self-consistency (or a Table 5 baseline's), then
    the RM re-learned on D u D_hat."""
    import task
    from plumbing import data
    cfg = run.cfg.rlp
    tokenizer = run.tokenizer()
    samples = run.read("rlp_samples", "P.jsonl", data.SAMPLES)
    prompts = run.prompts(tokenizer, samples)
    rm_step2 = run.scorer(run.require("reward"))
    cluster = clusterer(run) if cfg.synthetic_labels == "consistency" else None
    scores = score_all(rm_step2, tokenizer, samples, prompts, run.cfg.model.max_response_len, run.cfg.model.gen_batch)
    del rm_step2
    if cluster is not None:
        synthetic, stats = synthetic_preferences(samples, scores, gamma=cfg.spg_gamma, seed=run.seeds.spg,
                                                 cluster=cluster)
    else:  # the paper's Table 5 baselines
        from extras import ablations
        synthetic, stats = ablations.baseline_preferences(run, cfg.synthetic_labels, scores, tokenizer, samples,
                                                          seed=run.seeds.spg)
    if run.cfg.data.builtin:  # accuracy of the synthetic labels against the gold judge (exact gold ties count half)
        correct = [task.win_value(task.gold_score(r["instruction"], r["input"], r["output_1"]),
                                  task.gold_score(r["instruction"], r["input"], r["output_2"])) for r in synthetic]
        stats["label_accuracy_gold"] = sum(correct) / len(correct) if correct else None
    metrics.log(**stats)
    passed = (f"{stats['passed_gamma']}/{stats['instructions']} instructions pass gamma={cfg.spg_gamma}"
              if cfg.synthetic_labels == "consistency" else f"labels from {cfg.synthetic_labels}")
    acc = stats.get("label_accuracy_gold")
    run.log(f"  SPG: {passed}, {stats['pairs']} pairs" + (
        f", synthetic-label accuracy vs gold {'n/a' if acc is None else f'{acc:.3f}'}" if run.cfg.data.builtin else ""))
    run.write_records(dest / "synthetic_prefs.jsonl", synthetic)
    train, val, _ = reward.human_pairs(run, tokenizer)
    rm = new_rm(run)
    relearn_spg(rm, tokenizer, train, reward.to_pairs(run, tokenizer, synthetic), seed=run.seeds.spg,
                train_kwargs=reward.train_kwargs(run, metrics, val))
    reward.normalize_on_sft_samples(run, rm, tokenizer, metrics)
    run.save_model(rm, tokenizer, dest)


def stage_ppo(method: str):
    """Step 5: PPO from SFT against the RM re-learned by `method` (uml or spg)."""
    def stage(run, dest, metrics) -> None:
        import ppo
        ppo.run_ppo(run, run.require(f"rlp_reward_{method}"), dest, metrics, f"rlp-ppo-{method}")
    return stage
