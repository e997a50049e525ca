"""Step 4, RLP-UML: the multi-view information bottleneck (MIB) loss L_M of Eq. 1
(Federici et al., ICLR 2020), computed on two views of one instruction.

  v_1 = (x, y_1), v_2 = (x, y_2): two policy samples of the same instruction x
  h(v)      = RM final-layer hidden state of the last token of v
  p(z | v)  = N(mu(h), diag(sigma(h)^2)), mu and sigma from two 3-layer MLPs
  L_M       = E_P[ -I(z_1; z_2) + D_SKL(p(z|v_1) || p(z|v_2)) ]
  I(z_1; z_2) estimated with the Jensen-Shannon bound of Hjelm et al. 2018:
              E_pos[-softplus(-T)] - E_neg[softplus(T)], T = critic MLP on [z_a, z_b],
              positives = (z_1_i, z_2_i), negatives = (z_1_i, z_2_j): j = the other row of i's pair
              (0,1), (2,3), ... (`partner_rows`). Federici et al. roll z_2 by one row instead; pairs
              give each row one negative just the same, and keep every negative inside any even-sized
              contiguous shard, so L_M is the same whatever the number of processes.
Gradients of L_M flow into the RM backbone through h(v): that is how the unlabelled
policy samples shape the reward model's representation.

The paper's Table 4 replaces L_M with other representation losses (MVI, InfoMax, contrastive):
extras/ablations.py, as subclasses of MIBHeads that change `objective` (and `critic_inputs`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def symmetric_kl(mu1: torch.Tensor, std1: torch.Tensor, mu2: torch.Tensor, std2: torch.Tensor) -> torch.Tensor:
    """Eq. 1's D_SKL per row: (KL(p1||p2) + KL(p2||p1)) / 2 for diagonal Gaussians,
    closed form, summed over latent dimensions. Shapes [B, D] -> [B]."""
    var1, var2 = std1.pow(2), std2.pow(2)
    diff2 = (mu1 - mu2).pow(2)
    kl12 = torch.log(std2 / std1) + (var1 + diff2) / (2 * var2) - 0.5
    kl21 = torch.log(std1 / std2) + (var2 + diff2) / (2 * var1) - 0.5
    return 0.5 * (kl12 + kl21).sum(-1)


def jsd_mutual_information(critic_pos: torch.Tensor, critic_neg: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon MI estimate (Hjelm et al. 2018): mean(-softplus(-T_pos)) - mean(softplus(T_neg))."""
    return (-F.softplus(-critic_pos)).mean() - F.softplus(critic_neg).mean()


def partner_rows(n: int) -> torch.Tensor:
    """Index of each row's negative: 1, 0, 3, 2, ...; with n odd the last row takes row n - 2."""
    if n < 2:
        raise ValueError("the MI estimator needs at least 2 rows (one negative per row)")
    idx = torch.arange(n) ^ 1
    idx[idx >= n] = n - 2
    return idx


def beta_schedule(step: int, total: int, start: float = 1e-3, end: float = 1.0) -> float:
    """SKL weight rising exponentially from `start` to `end` over `total` steps: Federici et al.'s
    MIB warm-up (they start at 1e-3 and reach 1 late in training), compressed to one RM run."""
    return start * (end / start) ** min(1.0, step / max(1, total - 1))


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MIBHeads(nn.Module):
    """The extra UML parameters: Gaussian encoder p(z|v) (two 3-layer MLPs, shared by both
    views since the views are exchangeable) and the critic T(z_a, z_b) of the MI estimator.
    Saved in their own file beside the re-learned RM (uml_heads.safetensors)."""
    kind = "mib"

    def __init__(self, in_dim: int, hidden: int = 256, latent: int = 64):
        super().__init__()
        self.in_dim, self.hidden, self.latent = in_dim, hidden, latent
        self.mu = mlp([in_dim, hidden, hidden, latent])
        self.sigma = mlp([in_dim, hidden, hidden, latent])
        if self.critic_inputs():
            self.critic = mlp([self.critic_inputs(), hidden, hidden, 1])

    def critic_inputs(self) -> int:
        return 2 * self.latent  # T(z_1, z_2)

    def encode(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # sigma > 0 via softplus + a small epsilon (Federici et al.'s choice)
        return self.mu(h), F.softplus(self.sigma(h)) + 1e-7

    def critic_score(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([za, zb], -1)).squeeze(-1)

    def forward(self, h1: torch.Tensor, h2: torch.Tensor, beta: float = 1.0,
                noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
        """L_M for a batch of view pairs (row i of h1 and h2 share an instruction), and what to log.
        `noise`: the standard-normal draws of the reparameterisation (default: fresh ones)."""
        h1, h2 = h1.float(), h2.float()
        mu1, std1 = self.encode(h1)
        mu2, std2 = self.encode(h2)
        eps1, eps2 = noise if noise is not None else (torch.randn_like(std1), torch.randn_like(std2))
        z1 = mu1 + std1 * eps1  # reparameterisation trick
        z2 = mu2 + std2 * eps2
        partner = partner_rows(len(z2)).to(z2.device)
        skl = symmetric_kl(mu1, std1, mu2, std2).mean()  # logged for every loss, a loss term of L_M only
        stats = {"skl": skl.item()}
        loss = self.objective(h1, h2, mu1, mu2, z1, z2, partner, skl, beta, stats)
        stats["uml_loss"] = loss.item()
        return loss, stats

    def objective(self, h1, h2, mu1, mu2, z1, z2, partner, skl, beta: float, stats: dict) -> torch.Tensor:
        """Eq. 1's L_M = -I(z_1; z_2) + beta * D_SKL. The paper's L_M has beta = 1; `beta_schedule`
        warms it up, as Federici et al. do, because at full weight from the first step the encoder
        collapses (SKL -> 0 with z pure noise, I = 0) before the critic learns anything
        (tests/math/test_reward_ib.py shows it)."""
        mi = jsd_mutual_information(self.critic_score(z1, z2), self.critic_score(z1, z2[partner]))
        stats.update(mi_jsd=mi.item(), mib_beta=beta)
        return -mi + beta * skl

    def config(self) -> dict:
        return {"in_dim": self.in_dim, "hidden": self.hidden, "latent": self.latent, "kind": self.kind}
