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
from safetensors.torch import save_file

import lm
import ppo
import reward
import spg
import task
from ib_loss import MIBHeads, beta_schedule
from plumbing import data, dist, models
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


# ----------------------------------------------------------------------------- where the re-learned RM starts

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

def clusterer(run):
    """--spg-cluster: a record of P -> its outputs' cluster labels (spg.py). exact: equal answers
    (the built-in task's normalised answer, or for your own data the text with case and spacing
    ignored); nli: bidirectional entailment (paper); embedding: cosine of sentence embeddings. The
    last two read each answer after its question with --spg-condition-on-question on."""
    cfg = run.cfg.rlp
    if cfg.spg_cluster == "exact":
        if run.cfg.data.builtin:  # the answer as the gold judge reads it: "0237" and "237" differ for Sort
            return lambda rec: spg.cluster_by_key(rec["outputs"], lambda o: task.normalize(o, rec["instruction"]))
        return lambda rec: spg.cluster_by_key(rec["outputs"], lambda text: " ".join(text.split()).casefold())
    from extras import similarity
    question = spg.question_of if cfg.spg_condition_on_question == "on" else (lambda rec: None)
    if cfg.spg_cluster == "nli":
        with models.loading("--nli-model", cfg.nli_model):
            entails = similarity.NLIEntailment(cfg.nli_model, run.device)
        return lambda rec: spg.cluster_by_entailment(rec["outputs"], entails, question(rec))
    with models.loading("--embedding-model", cfg.embedding_model or "(all-MiniLM-L6-v2)"):
        embed = similarity.SentenceEmbedder(cfg.embedding_model or None, run.device)
    return lambda rec: spg.cluster_by_embedding(rec["outputs"], embed, cfg.embedding_threshold, question(rec))


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


def relearn_spg(rm, tokenizer, human_pairs: list[reward.Pair], synthetic: list[reward.Pair], *, seed: int,
                train_kwargs: dict) -> None:
    """RLP-SPG: Eq. 1 with lambda = 0 on D u D_hat."""
    reward.train_reward_model(rm, human_pairs + synthetic, tokenizer.pad_token_id, seed=seed,
                              desc="rlp-spg reward", **train_kwargs)


# ----------------------------------------------------------------------------- how the pipeline runs them

def folder(kind: str, method: str = "", round: int = 1) -> str:
    """A Step 4-5 stage's folder: samples (P), reward (the re-learned RM) or ppo (Step 5), of
    `method` and `round`. Round 1 shares one P; from round 2 each method samples its own."""
    if round == 1:
        return "rlp_samples" if kind == "samples" else f"rlp_{kind}_{method}"
    return f"rlp_{kind}_{method}_r{round}"


def policy_before(method: str, round: int) -> str:
    """The policy whose samples make round `round`'s P: Step 3's, then the previous round's."""
    return "ppo/policy" if round == 1 else f"{folder('ppo', method, round - 1)}/policy"


def stage_samples(method: str = "", round: int = 1):
    """Step 4, first half: the policy sample set P (round 1: from the Step-3 policy, shared by UML
    and SPG; round r: from `method`'s policy of round r - 1)."""
    def stage(run, dest, metrics) -> None:
        cfg = run.cfg
        tokenizer = run.tokenizer()
        policy = run.policy(run.require(policy_before(method, round).split("/")[0]) / "policy")
        recs = run.records("unlabeled")
        samples = build_policy_samples(policy, tokenizer, recs, run.prompts(tokenizer, recs), cfg.rlp.rlp_n,
                                       cfg.rlp.rlp_temperature, cfg.model.max_response_len, cfg.model.gen_batch,
                                       run.seeds.round(round).rlp_samples, show=run.show)
        run.write_records(dest / "P.jsonl", samples)
        metrics.log(instructions=len(samples), n=cfg.rlp.rlp_n)
    return stage


def stage_uml(round: int = 1, lam: float | None = None):
    """Step 4, RLP-UML: the RM re-learned on D with lambda * L_M on P; its heads saved beside it.
    `lam` overrides --uml-lambda (0: the control that re-trains the RM by the same code, L_M off).
    Logged beside the training: the share of hidden-state variance within an instruction, before
    and after (`hidden_variance`), and, every 10 steps, the backbone gradient norms of the
    Bradley-Terry term and of lambda * L_M and their cosine (reward.train_reward_model)."""
    def stage(run, dest, metrics) -> None:
        cfg, seeds = run.cfg.rlp, run.seeds.round(round)
        tokenizer = run.tokenizer()
        samples = run.read(folder("samples", "uml", round), "P.jsonl", data.SAMPLES)
        prompts = run.prompts(tokenizer, samples)
        train, val, _ = reward.human_pairs(run, tokenizer)
        rm = new_rm(run)
        probe = lambda model: hidden_variance(model, tokenizer, samples, prompts,  # noqa: E731
                                              run.cfg.model.max_response_len, run.cfg.model.gen_batch)
        before = probe(rm)
        heads = relearn_uml(rm, tokenizer, train, samples, prompts, lam=cfg.uml_lambda if lam is None else lam,
                            beta=cfg.uml_beta, heads_lr=cfg.uml_lr, latent=cfg.uml_latent, hidden=cfg.uml_hidden,
                            uml_batch=cfg.uml_batch, max_response_len=run.cfg.model.max_response_len,
                            seed=seeds.uml, views_seed=seeds.uml_views,
                            train_kwargs=reward.train_kwargs(run, metrics, val), kind=cfg.uml_loss)
        reward.normalize_on_sft_samples(run, rm, tokenizer, metrics)
        metrics.log(**{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in probe(rm).items()})
        run.save_model(rm, tokenizer, dest)
        if run.main:
            save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(dest / "uml_heads.safetensors"))
        run.write_json(dest / "uml_heads.json", heads.config())
    return stage


def stage_spg(round: int = 1):
    """Step 4, RLP-SPG: synthetic pairs from P by self-consistency (or a Table 5 baseline's), then
    the RM re-learned on D u D_hat. In every round y_w is picked by the Step-2 RM's score."""
    def stage(run, dest, metrics) -> None:
        cfg, seeds = run.cfg.rlp, run.seeds.round(round)
        tokenizer = run.tokenizer()
        samples = run.read(folder("samples", "spg", round), "P.jsonl", data.SAMPLES)
        prompts = run.prompts(tokenizer, samples)
        rm_step2 = run.scorer(run.require("reward"))
        cluster = clusterer(run) if cfg.synthetic_labels == "consistency" else None
        scores = score_all(rm_step2, tokenizer, samples, prompts, run.cfg.model.max_response_len,
                           run.cfg.model.gen_batch)
        del rm_step2
        if cluster is not None:
            synthetic, stats = synthetic_preferences(samples, scores, gamma=cfg.spg_gamma, seed=seeds.spg,
                                                     cluster=cluster)
        else:  # the paper's Table 5 baselines
            from extras import ablations
            synthetic, stats = ablations.baseline_preferences(run, cfg.synthetic_labels, scores, tokenizer, samples,
                                                              seed=seeds.spg)
        if run.cfg.data.builtin:  # accuracy of the synthetic labels against the gold judge (exact gold ties count half)
            stats["label_accuracy_gold"] = label_accuracy(synthetic)
        metrics.log(**stats)
        passed = (f"{stats['passed_gamma']}/{stats['instructions']} instructions pass gamma={cfg.spg_gamma}"
                  if cfg.synthetic_labels == "consistency" else f"labels from {cfg.synthetic_labels}")
        acc = stats.get("label_accuracy_gold")
        run.log(f"  SPG: {passed}, {stats['pairs']} pairs" + (
            f", synthetic-label accuracy vs gold {'n/a' if acc is None else f'{acc:.3f}'}" if run.cfg.data.builtin
            else ""))
        run.write_records(dest / "synthetic_prefs.jsonl", synthetic)
        train, val, _ = reward.human_pairs(run, tokenizer)
        rm = new_rm(run)
        relearn_spg(rm, tokenizer, train, reward.to_pairs(run, tokenizer, synthetic), seed=seeds.spg,
                    train_kwargs=reward.train_kwargs(run, metrics, val))
        reward.normalize_on_sft_samples(run, rm, tokenizer, metrics)
        run.save_model(rm, tokenizer, dest)
    return stage


def label_accuracy(pairs: list[dict]) -> float | None:
    """Share of preference pairs whose chosen output the gold judge scores higher (exact gold ties
    count half)."""
    wins = []
    for r in pairs:
        chosen, rejected = (r["output_1"], r["output_2"]) if r["preference"] == 1 else (r["output_2"], r["output_1"])
        wins.append(task.win_value(task.gold_score(r["instruction"], r["input"], chosen),
                                   task.gold_score(r["instruction"], r["input"], rejected)))
    return sum(wins) / len(wins) if wins else None


def stage_ppo(method: str, round: int = 1):
    """Step 5: PPO from SFT against the RM re-learned by `method` (uml, spg, or the fresh control)."""
    def stage(run, dest, metrics) -> None:
        name = f"rlp-ppo-{method}" + (f"-r{round}" if round > 1 else "")
        ppo.run_ppo(run, run.require(folder("reward", method, round)), dest, metrics, name)
    return stage


# ----------------------------------------------------------------------------- controls and diagnostics (not part of RLP)

def fresh_preferences(samples: list[dict], n_pairs: int, flip_rate: float, seed: int) -> tuple[list[dict], dict]:
    """The costly alternative RLP replaces: fresh labels on policy samples. For `n_pairs`
    instructions of P drawn at random, two of their samples with different texts
    (spg.random_pair), labelled by Step 1's simulated annotator (the gold preference, flipped with
    `flip_rate`) as a human would label them; instructions whose samples are all one text are
    passed over."""
    rng = random.Random(seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    pairs = []
    for i in order:
        if len(pairs) == n_pairs:
            break
        rec = samples[i]
        pick = spg.random_pair(rec["outputs"], rng)
        if pick is None:
            continue
        a, b = (rec["outputs"][j] for j in pick)
        pref = task.annotate(rec["instruction"], rec["input"], a, b, flip_rate, rng)
        pairs.append({"instruction": rec["instruction"], "input": rec["input"], "output_1": a, "output_2": b,
                      "preference": pref, "_where": rec.get("_where", "P")})
    return pairs, {"instructions": len(samples), "pairs": len(pairs), "requested_pairs": n_pairs}


@torch.no_grad()
def hidden_variance(rm, tokenizer, samples: list[dict], prompts: list[list[int]], max_response_len: int,
                    batch_size: int, n_instructions: int = 200) -> dict:
    """How much of the RM's representation still tells an instruction's samples apart: of the
    variance of the last-token hidden state over the first `n_instructions` of P (all their
    samples), the share that lies within an instruction, between its samples. RLP-UML's L_M
    pulls the two views of an instruction together; if it pulls too hard, this share goes to 0
    and with it the RM's ability to rank an instruction's answers."""
    device = next(rm.parameters()).device
    rm.eval()
    rows = [(i, o) for i in range(min(n_instructions, len(samples))) for o in samples[i]["outputs"]]
    hidden = []
    for k in range(0, len(rows), batch_size):
        chunk = rows[k:k + batch_size]
        p_ids, p_mask = lm.left_pad([prompts[i] for i, _ in chunk], tokenizer.pad_token_id, device)
        r_ids, r_mask = lm.right_pad(lm.encode_responses(tokenizer, [o for _, o in chunk], max_response_len),
                                     tokenizer.pad_token_id, device)
        with lm.autocast(device):
            hidden.append(lm.last_token_hidden(rm, p_ids, p_mask, r_ids, r_mask).float().cpu())
    h = torch.cat(hidden).double()
    groups = torch.tensor([i for i, _ in rows])
    total = h.var(0, unbiased=False).mean().item()
    within = sum(h[groups == g].var(0, unbiased=False).mean().item() for g in groups.unique().tolist()) / \
        len(groups.unique())
    return {"hidden_within": within, "hidden_total": total, "hidden_within_share": within / max(total, 1e-12)}


def stage_fresh(run, dest, metrics) -> None:
    """The fresh-label control (built-in task): as many pairs as SPG synthesised, from the same P,
    labelled by Step 1's simulated annotator, and the RM re-learned on D u those pairs exactly as
    SPG's is. Its policy's gain over PPO is about the most any re-learning on P could give."""
    tokenizer = run.tokenizer()
    samples = run.read("rlp_samples", "P.jsonl", data.SAMPLES)
    synthetic = run.require("rlp_reward_spg") / "synthetic_prefs.jsonl"
    n_pairs = sum(1 for line in synthetic.read_text().split("\n") if line.strip())
    fresh, stats = fresh_preferences(samples, n_pairs, run.cfg.prefs.flip_rate, run.seeds.fresh)
    stats["label_accuracy_gold"] = label_accuracy(fresh)
    metrics.log(**stats)
    acc = stats["label_accuracy_gold"]
    run.log(f"  fresh labels: {stats['pairs']} pairs (SPG made {n_pairs}), accuracy vs gold "
            f"{'n/a' if acc is None else f'{acc:.3f}'}")
    run.write_records(dest / "fresh_prefs.jsonl", fresh)
    train, val, _ = reward.human_pairs(run, tokenizer)
    rm = new_rm(run)
    relearn_spg(rm, tokenizer, train, reward.to_pairs(run, tokenizer, fresh), seed=run.seeds.fresh,
                train_kwargs=reward.train_kwargs(run, metrics, val))
    reward.normalize_on_sft_samples(run, rm, tokenizer, metrics)
    run.save_model(rm, tokenizer, dest)
