"""Reward learning (reward.py) and the RLP-UML multi-view information bottleneck (ib_loss.py)."""
import copy
import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence
from transformers import LlamaForSequenceClassification

import ib_loss
from plumbing import models
import reward
import lm

DT = torch.float64
torch.set_num_threads(1)  # tiny tensors: on a shared 2-core box extra threads only cost time


@pytest.fixture(scope="module")
def tok():
    return models.build_char_tokenizer()


def tiny_rm(tok, seed=0, head_std=0.5):
    base = models.new_tiny_llama(tok, hidden=32, layers=2, heads=2, max_len=64, seed=seed)
    cfg = copy.deepcopy(base.config)
    cfg.num_labels = 1
    torch.manual_seed(seed)
    rm = LlamaForSequenceClassification(cfg)
    rm.config.pad_token_id = tok.pad_token_id
    if head_std == 0:
        torch.nn.init.zeros_(rm.score.weight)
    else:
        torch.nn.init.normal_(rm.score.weight, std=head_std)
    return rm.eval()


# ----------------------------------------------------------------------------- Bradley-Terry

@pytest.mark.parametrize("seed", range(3))
def test_bradley_terry_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    c, r = torch.randn(17, generator=g, dtype=DT) * 3, torch.randn(17, generator=g, dtype=DT) * 3
    want = sum(math.log1p(math.exp(-(a - b))) for a, b in zip(c.tolist(), r.tolist())) / len(c)
    assert reward.bradley_terry_loss(c, r).item() == pytest.approx(want, abs=1e-12)


def test_bradley_terry_equal_rewards_is_log2():
    x = torch.randn(9, generator=torch.Generator().manual_seed(0))
    assert reward.bradley_terry_loss(x, x.clone()).item() == pytest.approx(math.log(2), abs=1e-6)


def test_bradley_terry_hand():
    # pair 1: margin 1 -> -log sigma(1) = log(1 + e^-1); pair 2: margin 0 -> log 2
    got = reward.bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])).item()
    assert got == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-6)
    # the wrong way round costs more: -log sigma(-1) = log(1 + e)
    assert reward.bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1.0])).item() == \
        pytest.approx(math.log(1 + math.e), abs=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up():
    c, r = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    reward.bradley_terry_loss(c, r).backward()
    assert torch.all(c.grad < 0) and torch.all(r.grad > 0)


# ----------------------------------------------------------------------------- pairwise accuracy

def test_pairwise_accuracy_ties_count_half_hand(monkeypatch):
    # c > r, c == r (half), c < r, c > r  ->  (1 + 0.5 + 0 + 1) / 4 = 0.625; margins (1 + 0 - 1 + 1) / 4 = 0.25
    c, r = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 0.0, 3.0, 4.0])

    def fake_pair_rewards(rm, pairs, pad_id, return_hidden=False):
        idx = [p.prompt[0] for p in pairs]
        return c[idx], r[idx]

    monkeypatch.setattr(reward, "pair_rewards", fake_pair_rewards)
    pairs = [reward.Pair([i], [1], [1]) for i in range(4)]
    out = reward.pairwise_accuracy(torch.nn.Identity(), pairs, pad_id=0, batch_size=3)  # 2 chunks
    assert out["accuracy"] == pytest.approx(0.625)
    assert out["margin"] == pytest.approx(0.25)
    assert out["pairs"] == 4


def test_pairwise_accuracy_all_ties_is_half(tok):
    rm = tiny_rm(tok, head_std=0)  # every score is exactly 0
    pairs = [reward.Pair(tok("Add 1 2 =").input_ids, [5, 6, 1], [7, 1]),
             reward.Pair(tok("Sort 3 1 =").input_ids, [8, 1], [9, 10, 11, 1])]
    out = reward.pairwise_accuracy(rm, pairs, tok.pad_token_id)
    assert out["accuracy"] == 0.5 and out["margin"] == 0.0


def test_pair_rewards_and_accuracy_match_one_at_a_time(tok):
    """Batched chosen+rejected forward (left-padded prompts, right-padded responses) = each alone."""
    rm = tiny_rm(tok, seed=3)
    g = torch.Generator().manual_seed(0)
    texts = ["Add 12 7 =", "Sort 3 9 1 4 =", "Reverse abc =", "Subtract 31 12 =", "Add 1 1 ="]
    pairs = []
    for t in texts:
        lens = torch.randint(1, 7, (2,), generator=g).tolist()
        pairs.append(reward.Pair(tok(t).input_ids, torch.randint(3, 70, (lens[0],), generator=g).tolist(),
                                 torch.randint(3, 70, (lens[1],), generator=g).tolist()))

    def alone(prompt, resp):
        p, pm = lm.left_pad([prompt], tok.pad_token_id)
        r, rmask = lm.right_pad([resp], tok.pad_token_id)
        return lm.sequence_scores(rm, p, pm, r, rmask).item()

    with torch.no_grad():
        c, r = reward.pair_rewards(rm, pairs, tok.pad_token_id)
        want_c = [alone(p.prompt, p.chosen) for p in pairs]
        want_r = [alone(p.prompt, p.rejected) for p in pairs]
    assert c.tolist() == pytest.approx(want_c, abs=1e-5)
    assert r.tolist() == pytest.approx(want_r, abs=1e-5)
    correct = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(want_c, want_r))
    assert 0 < correct < len(pairs), "a random RM should get some right and some wrong"
    out = reward.pairwise_accuracy(rm, pairs, tok.pad_token_id, batch_size=2)
    assert out["accuracy"] == pytest.approx(correct / len(pairs))
    assert out["margin"] == pytest.approx(sum(a - b for a, b in zip(want_c, want_r)) / len(pairs), abs=1e-5)


# ----------------------------------------------------------------------------- symmetric KL

def reference_skl(mu1, s1, mu2, s2):
    p = Independent(Normal(mu1, s1), 1)
    q = Independent(Normal(mu2, s2), 1)
    return 0.5 * (kl_divergence(p, q) + kl_divergence(q, p))


@pytest.mark.parametrize("seed", range(3))
def test_symmetric_kl_matches_torch_distributions(seed):
    g = torch.Generator().manual_seed(seed)
    mu1, mu2 = torch.randn(6, 5, generator=g, dtype=DT), torch.randn(6, 5, generator=g, dtype=DT)
    s1 = torch.rand(6, 5, generator=g, dtype=DT) * 2 + 0.1
    s2 = torch.rand(6, 5, generator=g, dtype=DT) * 2 + 0.1
    got = ib_loss.symmetric_kl(mu1, s1, mu2, s2)
    assert got.shape == (6,)
    torch.testing.assert_close(got, reference_skl(mu1, s1, mu2, s2), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(got, ib_loss.symmetric_kl(mu2, s2, mu1, s1), atol=1e-12, rtol=0)  # symmetric
    assert torch.all(got > 0)


def test_symmetric_kl_zero_for_identical():
    g = torch.Generator().manual_seed(0)
    mu, s = torch.randn(4, 3, generator=g), torch.rand(4, 3, generator=g) + 0.5
    assert torch.allclose(ib_loss.symmetric_kl(mu, s, mu.clone(), s.clone()), torch.zeros(4), atol=1e-6)


def test_symmetric_kl_hand_1d():
    # p1 = N(0, 1), p2 = N(1, 2^2)
    # KL(p1||p2) = log 2 + (1 + 1) / 8 - 1/2 = log 2 - 0.25
    # KL(p2||p1) = log 1/2 + (4 + 1) / 2 - 1/2 = 2 - log 2
    # average = (1.75) / 2 = 0.875 (the logs cancel)
    got = ib_loss.symmetric_kl(torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]),
                               torch.tensor([[2.0]]))
    assert got.item() == pytest.approx(0.875, abs=1e-6)


# ----------------------------------------------------------------------------- JSD mutual information

@pytest.mark.parametrize("seed", range(3))
def test_jsd_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randn(11, generator=g, dtype=DT) * 3, torch.randn(7, generator=g, dtype=DT) * 3
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    want = sum(-sp(-t) for t in pos.tolist()) / len(pos) - sum(sp(t) for t in neg.tolist()) / len(neg)
    assert ib_loss.jsd_mutual_information(pos, neg).item() == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("n", [2, 3, 4, 7, 10])
def test_partner_rows_match_a_loop(n):
    want = []
    for i in range(n):
        j = i + 1 if i % 2 == 0 else i - 1
        want.append(j if j < n else n - 2)
    got = ib_loss.partner_rows(n).tolist()
    assert got == want
    assert all(g != i for i, g in enumerate(got))  # never its own positive
    for start in range(0, n - n % 2, 2):  # an even-sized block keeps its pairs inside
        assert set(got[start:start + 2]) == {start, start + 1}


def test_jsd_hand():
    # T = 0 everywhere (a critic that knows nothing): -log 2 - log 2 = -2 log 2
    assert ib_loss.jsd_mutual_information(torch.zeros(3), torch.zeros(5)).item() == \
        pytest.approx(-2 * math.log(2), abs=1e-6)
    # pos (2, 0), neg (-1): -(log(1+e^-2) + log 2)/2 - log(1+e^-1)
    want = -(math.log(1 + math.exp(-2)) + math.log(2)) / 2 - math.log(1 + math.exp(-1))
    got = ib_loss.jsd_mutual_information(torch.tensor([2.0, 0.0]), torch.tensor([-1.0])).item()
    assert got == pytest.approx(want, abs=1e-6)


def train_critic_and_estimate(dependent: bool, seed: int = 0, steps: int = 300) -> float:
    """Train a critic T(z_a, z_b) (the MIBHeads critic MLP) to maximise the JSD bound on
    z2 = z1 + small noise (dependent) or z2 independent of z1; return the estimate on fresh data."""
    torch.manual_seed(seed)
    critic = ib_loss.mlp([8, 32, 32, 1])

    def estimate(z1, z2):
        t = lambda a, b: critic(torch.cat([a, b], -1)).squeeze(-1)  # noqa: E731
        return ib_loss.jsd_mutual_information(t(z1, z2), t(z1, z2[ib_loss.partner_rows(len(z2))]))

    def pairs(n):
        z1 = torch.randn(n, 4)
        return z1, (z1 + 0.1 * torch.randn(n, 4) if dependent else torch.randn(n, 4))

    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = -estimate(*pairs(128))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return estimate(*pairs(2048)).item()


def test_jsd_estimate_higher_for_dependent_pairs():
    dep, ind = train_critic_and_estimate(True), train_critic_and_estimate(False)
    assert dep > ind + 0.5, (dep, ind)
    assert ind < -1.3  # about -2 log 2: a critic cannot tell independent positives from negatives
    assert dep <= 0.0  # the JSD bound is never positive


def train_mib_and_estimate(dependent: bool, seed: int = 0, steps: int = 600, beta: float = 1e-3) -> float:
    """Train MIBHeads (encoder + critic) with its own loss L_M on views h2 = h1 + small noise
    (dependent) or h2 independent of h1; return the JSD estimate of I(z1; z2) on fresh data."""
    torch.manual_seed(seed)
    heads = ib_loss.MIBHeads(in_dim=4, hidden=32, latent=4)
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)

    def views(n):
        h1 = torch.randn(n, 4)
        return h1, (h1 + 0.1 * torch.randn(n, 4) if dependent else torch.randn(n, 4))

    for _ in range(steps):
        loss, _ = heads(*views(128), beta=beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return sum(heads(*views(512))[1]["mi_jsd"] for _ in range(4)) / 4


def test_mib_training_keeps_shared_information():
    """L_M, at the warm-up SKL weight (ib_loss.beta_schedule starts at 1e-3, as Federici et al.),
    must not throw away what two near-identical views share. At full weight from the first step
    the encoder collapses (SKL -> 0, JSD estimate -2 log 2 for dependent views too): that is why
    the schedule exists."""
    dep, ind = train_mib_and_estimate(True), train_mib_and_estimate(False)
    assert dep > ind + 0.5, (dep, ind)


def test_mib_heads_sigma_positive_and_skl_zero_for_same_view():
    torch.manual_seed(0)
    heads = ib_loss.MIBHeads(in_dim=8, hidden=16, latent=3)
    h = torch.randn(5, 8) * 50
    _, std = heads.encode(h)
    assert torch.all(std > 0)
    _, row = heads(h, h.clone())
    assert row["skl"] == pytest.approx(0.0, abs=1e-5)
    assert math.isfinite(row["uml_loss"]) and row["uml_loss"] == pytest.approx(-row["mi_jsd"] + row["skl"], abs=1e-5)


def test_beta_schedule_rises_from_start_to_end():
    vals = [ib_loss.beta_schedule(s, 11) for s in range(11)]
    assert vals[0] == pytest.approx(1e-3) and vals[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(vals, vals[1:]))
    assert vals[5] == pytest.approx(math.sqrt(1e-3))  # exponential: geometric mean at the midpoint


# ----------------------------------------------------------------------------- what each term of Eq. 1 asks of the RM

def test_gradient_split_by_hand():
    """Two terms back-propagated one after the other: the first's gradient is the copy, the
    second's the difference. a = (3, 0) and b = (0, 4) on one parameter, (0, 0) and (1, 0) on a
    second the first term does not reach: |a| = 3, |b| = sqrt(17), a.b = 0."""
    from plumbing import dist
    first = [torch.tensor([3.0, 0.0]), None]
    total = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])]
    out = dist.gradient_split(first, total, names=("bt", "extra"))
    assert out["bt_grad_norm"] == pytest.approx(3.0) and out["extra_grad_norm"] == pytest.approx(math.sqrt(17))
    assert out["grad_cosine"] == pytest.approx(0.0)
    same = dist.gradient_split([torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])])
    assert same["grad_cosine"] == pytest.approx(1.0)  # the second term pulls the same way, twice as hard


def test_train_reward_model_logs_each_terms_backbone_gradient(tok):
    """The logged norms are those of the Bradley-Terry gradient and of the extra term's gradient on
    the backbone (every parameter but the score head), each computed here on its own; logging
    changes no weight."""
    prompts = [tok(t).input_ids for t in ["Add 12 7 =", "Sort 3 9 1 =", "Reverse abc =", "Add 1 1 ="]]
    pairs = [reward.Pair(p, [5, 6, 1], [7, 1]) for p in prompts]
    h_ids, h_mask = lm.left_pad(prompts, tok.pad_token_id)
    r_ids, r_mask = lm.right_pad([[8, 1]] * 4, tok.pad_token_id)

    def extra_loss(rm):  # a stand-in for lambda * L_M: a function of the last-token hidden state
        return lambda step: (0.3 * lm.last_token_hidden(rm, h_ids, h_mask, r_ids, r_mask).pow(2).mean(), {})

    def backbone_grads(rm, loss):
        rm.zero_grad()
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for n, p in rm.named_parameters() if not n.startswith("score.")])

    rm = tiny_rm(tok, seed=3)
    c, r = reward.pair_rewards(rm, pairs, tok.pad_token_id)
    bt = backbone_grads(rm, reward.bradley_terry_loss(c, r))
    ex = backbone_grads(rm, extra_loss(rm)(0)[0])
    rows = []

    class Log:
        def log(self, **row):
            rows.append(row)

    trained = tiny_rm(tok, seed=3)
    plain = tiny_rm(tok, seed=3)
    for model, metrics in [(trained, Log()), (plain, None)]:
        reward.train_reward_model(model, pairs, tok.pad_token_id, lr=1e-3, batch_size=4, epochs=1, max_grad_norm=1.0,
                                  seed=0, metrics=metrics, extra_loss=extra_loss(model), show=False)
    row = rows[0]
    assert row["bt_grad_norm"] == pytest.approx(bt.norm().item(), rel=1e-4)
    assert row["extra_grad_norm"] == pytest.approx(ex.norm().item(), rel=1e-4)
    assert row["grad_cosine"] == pytest.approx((bt @ ex / (bt.norm() * ex.norm())).item(), abs=1e-4)
    for p, q in zip(trained.parameters(), plain.parameters()):
        assert torch.equal(p, q)  # logging took copies: the training is bitwise the one without it


def test_normalised_scores_on_the_sft_samples_have_mean_0_and_std_1(tok):
    """Checklist 7: after normalize_scores, the RM's scores of the texts it was normalised on have
    mean 0 and standard deviation 1 (the KL coefficient then means the same for every RM)."""
    from plumbing.sampling import score_texts
    rm = tiny_rm(tok, seed=5)
    prompts = [tok(t).input_ids for t in ["Add 12 7 =", "Sort 3 9 1 =", "Reverse abc =", "Add 1 1 ="] * 3]
    texts = ["19", "139", "cba", "2", "18", "931", "abc", "11", "1", "913", "bca", "3"]
    mean, std = reward.normalize_scores(rm, tok, prompts, texts, max_response_len=8)
    assert rm.config.score_mean == mean and rm.config.score_std == std
    scores = score_texts(rm, tok, prompts, texts, 8, batch_size=5)
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-5) and scores.std().item() == pytest.approx(1.0, abs=1e-5)
