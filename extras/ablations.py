"""The paper's ablations: what replaces one piece of RLP in its Tables 4 and 5. Nothing here is
part of RLP-UML or RLP-SPG themselves; `--uml-loss` and `--synthetic-labels` select these.

Table 4, the representation loss of RLP-UML (`--uml-loss`), each on the same two views as L_M:
  mib          -I(z_1; z_2) + beta * D_SKL          the paper's L_M (ib_loss.MIBHeads)
  mvi          -I(z_1; z_2)                         multi-view InfoMax: no bottleneck term
  infomax      -(I(v_1; z_1) + I(v_2; z_2)) / 2     InfoMax: each view with its own code, T(h, z)
  contrastive  InfoNCE between mu(h_1) and mu(h_2)  all other rows of the batch are negatives

Table 5, where RLP-SPG's synthetic labels come from (`--synthetic-labels`; Select-All is SPG with
`--spg-gamma 0`): reward (the Step-2 RM ranks two random samples of an instruction) or rlaif (the
Step-3 policy judges them, extras/judge.py).
"""
from __future__ import annotations

import random
from typing import Callable

import torch
import torch.nn.functional as F

from ib_loss import MIBHeads, jsd_mutual_information
from spg import random_pair

UML_LOSSES = ("mib", "mvi", "infomax", "contrastive")


# ----------------------------------------------------------------------------- Table 4

class MVIHeads(MIBHeads):
    """-I(z_1; z_2): L_M without its bottleneck term."""
    kind = "mvi"

    def objective(self, h1, h2, mu1, mu2, z1, z2, partner, skl, beta, stats):
        mi = jsd_mutual_information(self.critic_score(z1, z2), self.critic_score(z1, z2[partner]))
        stats.update(mi_jsd=mi.item(), mib_beta=0.0)
        return -mi


class InfoMaxHeads(MIBHeads):
    """-(I(v_1; z_1) + I(v_2; z_2)) / 2: each view with its own code; positives (h_i, z_i),
    negatives (h_i, z_j), with the critic on [h, z]."""
    kind = "infomax"

    def critic_inputs(self) -> int:
        return self.in_dim + self.latent

    def objective(self, h1, h2, mu1, mu2, z1, z2, partner, skl, beta, stats):
        mi = 0.5 * sum(jsd_mutual_information(self.critic_score(h, z), self.critic_score(h, z[partner]))
                       for h, z in ((h1, z1), (h2, z2)))
        stats.update(mi_jsd=mi.item())
        return -mi


class ContrastiveHeads(MIBHeads):
    """InfoNCE between the two views' means; no critic."""
    kind = "contrastive"

    def critic_inputs(self) -> int:
        return 0

    def objective(self, h1, h2, mu1, mu2, z1, z2, partner, skl, beta, stats):
        loss = info_nce(mu1, mu2)
        stats.update(info_nce=loss.item())
        return loss


HEADS = {cls.kind: cls for cls in (MIBHeads, MVIHeads, InfoMaxHeads, ContrastiveHeads)}


def RepresentationHeads(in_dim: int, hidden: int, latent: int, kind: str) -> MIBHeads:  # noqa: N802 (a factory)
    """The heads of `kind` (UML_LOSSES)."""
    if kind not in HEADS:
        raise ValueError(f"unknown UML loss {kind!r}; one of {', '.join(UML_LOSSES)}")
    return HEADS[kind](in_dim, hidden, latent)


def info_nce(za: torch.Tensor, zb: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP / SimCLR style): cross-entropy of picking row i of zb for row i of
    za among all rows (and back), on cosine similarity / temperature (0.1: ours). Unlike the JSD
    pairs, its negatives are the whole batch, so its value depends on the batch size (and, under
    torchrun, on the per-process batch)."""
    za, zb = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    logits = za @ zb.T / temperature
    labels = torch.arange(len(za), device=za.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))



# ----------------------------------------------------------------------------- Table 5

def pairs_by_labeler(samples: list[dict], label_pairs: Callable[[list[dict], list[str], list[str]], list[int]],
                     seed: int) -> tuple[list[dict], dict]:
    """D_hat for the Table 5 baselines: two random samples per instruction (`random_pair`), labelled
    by `label_pairs(records, first, second)` -> 1 (first better), 2 (second better) or 0 (no
    preference: the pair is dropped). Reward: the Step-2 RM's higher score; RLAIF: the policy as
    a judge (judge.py). Every instruction is used: there is no confidence filter."""
    rng = random.Random(seed)
    chosen_rows, first, second = [], [], []
    for rec in samples:
        pair = random_pair(rec["outputs"], rng)
        if pair is not None:
            chosen_rows.append(rec)
            first.append(rec["outputs"][pair[0]])
            second.append(rec["outputs"][pair[1]])
    labels = label_pairs(chosen_rows, first, second) if chosen_rows else []
    pairs = []
    for rec, a, b, label in zip(chosen_rows, first, second, labels):
        if label in (1, 2):
            w, l = (a, b) if label == 1 else (b, a)
            pairs.append({"instruction": rec["instruction"], "input": rec["input"], "output_1": w, "output_2": l,
                          "preference": 1, "_where": rec.get("_where", "P")})
    stats = {"instructions": len(samples), "passed_gamma": len(samples), "pairs": len(pairs),
             "passed_fraction": 1.0, "labelled_pairs": len(chosen_rows), "no_preference": len(chosen_rows) - len(pairs)}
    return pairs, stats


def baseline_preferences(run, labels: str, scores: list[list[float]], tokenizer, samples: list[dict], *,
                         seed: int) -> tuple[list[dict], dict]:
    """D_hat from a Table 5 baseline on two random samples per instruction (`pairs_by_labeler`):
    "reward" (the higher Step-2 RM score, `scores` per instruction's outputs) or "rlaif" (the
    Step-3 policy as a judge)."""
    if labels == "rlaif":  # the Step-3 policy judges its own samples
        from extras import judge
        from plumbing import models
        policy = models.load_policy(run.require("ppo") / "policy", run.device)
        batch = run.cfg.model.gen_batch
        label_pairs = lambda recs, a, b: judge.judge_pairs(policy, tokenizer, recs, a, b, batch)  # noqa: E731
    elif labels == "reward":
        text_score = {id(s): dict(zip(s["outputs"], row)) for s, row in zip(samples, scores)}

        def label_pairs(records, first, second):  # 1: first scores higher, 2: second, 0: a tie
            pair_scores = [(text_score[id(r)][a], text_score[id(r)][b]) for r, a, b in zip(records, first, second)]
            return [1 if sa > sb else 2 if sb > sa else 0 for sa, sb in pair_scores]
    else:
        raise ValueError(f"unknown synthetic labels {labels!r}; one of consistency, reward, rlaif")
    pairs, stats = pairs_by_labeler(samples, label_pairs, seed)
    return pairs, {**stats, "n": len(samples[0]["outputs"]) if samples else 0, "labels": labels}
