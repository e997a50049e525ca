"""PPO math (ppo.py): every vectorised function against a slow per-element Python loop on
random inputs with random per-row lengths, plus one small case worked out by hand.

Masks are built from lengths (1.0 up to the row's length, 0.0 after), and the invalid
positions of every input are filled with junk so that a function that forgets the mask fails.
"""
import math

import pytest
import torch

import ppo

torch.set_num_threads(1)  # tiny tensors: on a shared 2-core box extra threads only cost time

DT = torch.float64


# ----------------------------------------------------------------------------- helpers

def random_batch(seed: int, B: int = 6, T: int = 9):
    """Random lengths in 1..T (at least one full row and one length-1 row) and the mask they give."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g).tolist()
    lengths[0], lengths[-1] = T, 1
    mask = torch.zeros(B, T, dtype=DT)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1.0
    return g, lengths, mask


def close(got: torch.Tensor, want, atol=1e-6):
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=DT), atol=atol, rtol=0)


def randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=DT) * scale


# ----------------------------------------------------------------------------- masked_mean / masked_whiten

@pytest.mark.parametrize("seed", range(3))
def test_masked_mean_matches_loop(seed):
    g, lengths, mask = random_batch(seed)
    x = randn(g, *mask.shape)
    vals = [x[b, t].item() for b, L in enumerate(lengths) for t in range(L)]
    assert ppo.masked_mean(x, mask).item() == pytest.approx(sum(vals) / len(vals), abs=1e-12)


def test_masked_mean_hand():
    # valid: 1, 2, 6 -> mean 3; the 100 is masked out
    x = torch.tensor([[1.0, 2.0], [6.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert ppo.masked_mean(x, mask).item() == pytest.approx(3.0)


@pytest.mark.parametrize("seed", range(3))
def test_masked_whiten_statistics(seed):
    g, lengths, mask = random_batch(seed)
    x = randn(g, *mask.shape, scale=3.0) + 5.0
    out = ppo.masked_whiten(x, mask)
    valid = torch.tensor([out[b, t].item() for b, L in enumerate(lengths) for t in range(L)], dtype=DT)
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)  # population std over valid tokens
    assert torch.all(out[mask == 0] == 0)
    # and element by element against the obvious formula with statistics over valid tokens only
    raw = torch.tensor([x[b, t].item() for b, L in enumerate(lengths) for t in range(L)], dtype=DT)
    mu, sd = raw.mean().item(), raw.std(unbiased=False).item()
    for b, L in enumerate(lengths):
        for t in range(L):
            assert out[b, t].item() == pytest.approx((x[b, t].item() - mu) / sd, abs=1e-6)


def test_masked_whiten_hand_and_no_shift():
    # valid tokens 1, 3 (mean 2, population std 1) -> -1, +1; the masked 50 must not enter the statistics
    x = torch.tensor([[1.0, 3.0, 50.0]], dtype=DT)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=DT)
    close(ppo.masked_whiten(x, mask), [[-1.0, 1.0, 0.0]])
    # shift_mean=False keeps the mean (TRL convention): 2 + (-1, +1)
    close(ppo.masked_whiten(x, mask, shift_mean=False), [[1.0, 3.0, 0.0]])


# ----------------------------------------------------------------------------- kl_penalized_rewards

def slow_kl_rewards(scores, logprobs, ref_logprobs, lengths, beta, T):
    out = [[0.0] * T for _ in lengths]
    for b, L in enumerate(lengths):
        for t in range(L):
            out[b][t] = -beta * (logprobs[b, t].item() - ref_logprobs[b, t].item())
            if t == L - 1:
                out[b][t] += scores[b].item()
    return torch.tensor(out, dtype=DT)


@pytest.mark.parametrize("seed", range(4))
def test_kl_penalized_rewards_matches_loop(seed):
    g, lengths, mask = random_batch(seed)
    B, T = mask.shape
    scores = randn(g, B, scale=2.0)
    lp, ref = randn(g, B, T) - 2.0, randn(g, B, T) - 2.0  # junk after the end too
    beta = 0.05 + 0.3 * seed
    got = ppo.kl_penalized_rewards(scores, lp, ref, mask, beta)
    torch.testing.assert_close(got, slow_kl_rewards(scores, lp, ref, lengths, beta, T), atol=1e-12, rtol=0)


def test_kl_penalized_rewards_hand():
    # beta = 0.5
    # row 0 (3 valid): t0 -0.5*(-1 - -1.5) = -0.25; t1 -0.5*0 = 0; t2 -0.5*(-3 - -2) = 0.5, + score 2 = 2.5
    # row 1 (2 valid): t0 -0.5*(-0.5 - -1) = -0.25; t1 0 + score -1 = -1; t2 invalid -> 0
    scores = torch.tensor([2.0, -1.0])
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -9.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    got = ppo.kl_penalized_rewards(scores, lp, ref, mask, 0.5)
    close(got, [[-0.25, 0.0, 2.5], [-0.25, -1.0, 0.0]])


# ----------------------------------------------------------------------------- gae

def slow_gae(rewards, values, lengths, gamma, lam, T):
    adv = [[0.0] * T for _ in lengths]
    ret = [[0.0] * T for _ in lengths]
    for b, L in enumerate(lengths):
        a_next = 0.0
        for t in reversed(range(L)):
            v_next = values[b, t + 1].item() if t + 1 < L else 0.0  # V = 0 after the last valid token
            delta = rewards[b, t].item() + gamma * v_next - values[b, t].item()
            a_next = delta + gamma * lam * a_next
            adv[b][t] = a_next
            ret[b][t] = a_next + values[b, t].item()
    return torch.tensor(adv, dtype=DT), torch.tensor(ret, dtype=DT)


@pytest.mark.parametrize("seed,gamma,lam", [(0, 1.0, 1.0), (1, 0.99, 0.95), (2, 0.9, 0.5), (3, 0.5, 0.0)])
def test_gae_matches_loop(seed, gamma, lam):
    g, lengths, mask = random_batch(seed)
    B, T = mask.shape
    rewards, values = randn(g, B, T), randn(g, B, T)  # junk after the end, must be ignored
    adv, ret = ppo.gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = slow_gae(rewards, values, lengths, gamma, lam, T)
    torch.testing.assert_close(adv, want_adv, atol=1e-10, rtol=0)
    torch.testing.assert_close(ret, want_ret, atol=1e-10, rtol=0)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


def test_gae_reward_to_go():
    """gamma = lam = 1 and V = 0: A_t = sum of the rewards from t to the end of the row."""
    g, lengths, mask = random_batch(7)
    B, T = mask.shape
    rewards = randn(g, B, T)
    adv, ret = ppo.gae(rewards, torch.zeros(B, T, dtype=DT), mask, 1.0, 1.0)
    for b, L in enumerate(lengths):
        for t in range(T):
            want = sum(rewards[b, s].item() for s in range(t, L)) if t < L else 0.0
            assert adv[b, t].item() == pytest.approx(want, abs=1e-10)
            assert ret[b, t].item() == pytest.approx(want, abs=1e-10)


def test_gae_hand():
    # gamma 0.9, lam 0.5
    # row 0, 2 valid: t1 delta = 0 + 0.9*0 - 1.0 = -1.0 -> A1 = -1.0, R1 = 0.0
    #                 t0 delta = 1 + 0.9*1.0 - 0.5 = 1.4 -> A0 = 1.4 + 0.45*(-1.0) = 0.95, R0 = 1.45
    # row 1, 3 valid, V = 0: A2 = 1, A1 = 0 + 0.45*1 = 0.45, A0 = 0.45*0.45 = 0.2025 (= returns)
    rewards = torch.tensor([[1.0, 0.0, 7.0], [0.0, 0.0, 1.0]], dtype=DT)
    values = torch.tensor([[0.5, 1.0, -3.0], [0.0, 0.0, 0.0]], dtype=DT)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=DT)
    adv, ret = ppo.gae(rewards, values, mask, 0.9, 0.5)
    close(adv, [[0.95, -1.0, 0.0], [0.2025, 0.45, 1.0]])
    close(ret, [[1.45, 0.0, 0.0], [0.2025, 0.45, 1.0]])


# ----------------------------------------------------------------------------- policy_loss / value_loss

def slow_policy_loss(lp, old, adv, lengths, eps):
    terms = []
    for b, L in enumerate(lengths):
        for t in range(L):
            rho = math.exp(lp[b, t].item() - old[b, t].item())
            a = adv[b, t].item()
            terms.append(max(-a * rho, -a * min(max(rho, 1 - eps), 1 + eps)))
    return sum(terms) / len(terms)


def slow_value_loss(v, old, ret, lengths, eps):
    terms = []
    for b, L in enumerate(lengths):
        for t in range(L):
            vv, vo, r = v[b, t].item(), old[b, t].item(), ret[b, t].item()
            vc = vo + min(max(vv - vo, -eps), eps)
            terms.append(max((vv - r) ** 2, (vc - r) ** 2))
    return 0.5 * sum(terms) / len(terms)


@pytest.mark.parametrize("seed", range(4))
def test_policy_loss_matches_loop(seed):
    g, lengths, mask = random_batch(seed)
    B, T = mask.shape
    old = randn(g, B, T) - 2.0
    lp = old + randn(g, B, T, scale=0.4)  # ratios spread on both sides of the clip range
    adv = randn(g, B, T)
    got = ppo.policy_loss(lp, old, adv, mask, 0.2).item()
    assert got == pytest.approx(slow_policy_loss(lp, old, adv, lengths, 0.2), abs=1e-12)


def test_policy_loss_hand():
    # eps 0.2
    # t0: rho 1, A  1:  max(-1, -1)                 = -1
    # t1: rho 2, A  1:  max(-2, -1*1.2)             = -1.2
    # t2: rho .5, A -2: max(2*.5, 2*.8) = max(1, 1.6) = 1.6
    # t3: masked (huge values ignored)
    # mean over 3 valid tokens: (-1 - 1.2 + 1.6) / 3 = -0.2
    lp = torch.tensor([[0.0, math.log(2.0), math.log(0.5), 10.0]], dtype=DT)
    old = torch.zeros(1, 4, dtype=DT)
    adv = torch.tensor([[1.0, 1.0, -2.0, 1e6]], dtype=DT)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=DT)
    assert ppo.policy_loss(lp, old, adv, mask, 0.2).item() == pytest.approx(-0.2)


@pytest.mark.parametrize("seed", range(4))
def test_value_loss_matches_loop(seed):
    g, lengths, mask = random_batch(seed)
    B, T = mask.shape
    old = randn(g, B, T)
    v = old + randn(g, B, T, scale=0.5)
    ret = randn(g, B, T)
    got = ppo.value_loss(v, old, ret, mask, 0.2).item()
    assert got == pytest.approx(slow_value_loss(v, old, ret, lengths, 0.2), abs=1e-12)


def test_value_loss_hand():
    # eps 0.5
    # t0: V 1, V_old 0, R 2: unclipped (1-2)^2 = 1; clipped V = 0 + 0.5 -> (0.5-2)^2 = 2.25; max 2.25
    # t1: V 3, V_old 2, R 0: unclipped 9; clipped V = 2.5 -> 6.25; max 9
    # t2: masked
    # 0.5 * (2.25 + 9) / 2 = 2.8125
    v = torch.tensor([[1.0, 3.0, 100.0]], dtype=DT)
    old = torch.tensor([[0.0, 2.0, 0.0]], dtype=DT)
    ret = torch.tensor([[2.0, 0.0, -100.0]], dtype=DT)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=DT)
    assert ppo.value_loss(v, old, ret, mask, 0.5).item() == pytest.approx(2.8125)


def test_losses_gradients_ignore_masked_tokens():
    g, lengths, mask = random_batch(11)
    B, T = mask.shape
    lp = (randn(g, B, T) - 1.0).requires_grad_()
    v = randn(g, B, T).requires_grad_()
    loss = ppo.policy_loss(lp, lp.detach() + 0.1, randn(g, B, T), mask, 0.2) + \
        ppo.value_loss(v, v.detach(), randn(g, B, T), mask, 0.2)
    loss.backward()
    assert torch.all(lp.grad[mask == 0] == 0) and torch.all(v.grad[mask == 0] == 0)
    assert lp.grad[mask == 1].abs().sum() > 0 and v.grad[mask == 1].abs().sum() > 0


# ----------------------------------------------------------------------------- KLController

def test_kl_controller_fixed_stays_fixed():
    kl = ppo.KLController(0.02)
    for measured in (0.0, 5.0, 100.0, -3.0):
        kl.update(measured, 512)
    assert kl.value == 0.02


def test_kl_controller_adaptive_direction_and_hand():
    # target 6, horizon 10000, n = 100
    # KL 12: error = clip(12/6 - 1 = 1, +-0.2) = 0.2  -> beta = 0.1 * (1 + 0.2 * 100/10000) = 0.1002
    up = ppo.KLController(0.1, target=6.0, horizon=10000)
    up.update(12.0, 100)
    assert up.value == pytest.approx(0.1002)
    # KL 3: error = clip(-0.5) = -0.2 -> beta = 0.1 * (1 - 0.002) = 0.0998
    down = ppo.KLController(0.1, target=6.0, horizon=10000)
    down.update(3.0, 100)
    assert down.value == pytest.approx(0.0998)
    # KL 6.6: error 0.1 (inside the clip) -> 0.1 * (1 + 0.1 * 0.01) = 0.1001
    mid = ppo.KLController(0.1, target=6.0, horizon=10000)
    mid.update(6.6, 100)
    assert mid.value == pytest.approx(0.1001)
    # on target: unchanged
    same = ppo.KLController(0.1, target=6.0, horizon=10000)
    same.update(6.0, 100)
    assert same.value == pytest.approx(0.1)
    # repeated: keeps moving the same way
    for _ in range(5):
        up.update(12.0, 100)
        down.update(3.0, 100)
    assert up.value > 0.1002 and down.value < 0.0998
