"""A worker for tests/scale/test_dist.py, run with one process (`python tests/helpers/dist_worker.py OUT`) or
several (`torchrun --nproc_per_node=2 tests/helpers/dist_worker.py OUT`). Rank 0 saves, under OUT:

  sft_grad.pt, rm_grad.pt   the gradient of one SFT step and one RM step on a fixed global batch
                            (sft.accumulate_gradients / reward.accumulate_gradients + the all-reduce)
  uml_grad.pt               the gradient of one RLP-UML step (Bradley-Terry + lambda * L_M), RM and heads
  ppo_start.pt, ppo_params.pt   the weights before, and every rank's weights after, one PPO iteration
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from plumbing import dist  # noqa: E402
from plumbing import models  # noqa: E402
import reward  # noqa: E402
import sft  # noqa: E402
import task  # noqa: E402
import config  # noqa: E402
from ppo import train_ppo  # noqa: E402
import lm


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).clone()


def main(out: Path, micro: int) -> None:
    device = dist.init()
    torch.set_num_threads(1)
    tok = models.build_char_tokenizer()
    policy = models.new_tiny_llama(tok, 32, 2, 2, 48, seed=0).to(device)
    model_dir = out / "tiny"
    if dist.is_main():
        models.save_pretrained(policy, tok, model_dir)
    dist.barrier()
    splits = task.make_splits(0, n_sft=64, n_pref=32, n_unlabeled=32, n_eval=4, sft_noise=0.3)
    demos = splits["sft"]
    prompts = models.encode_prompts(tok, demos, "compact", 32)
    responses = lm.encode_responses(tok, [r["output"] for r in demos], 10)
    batch = list(range(3, 3 + 16))  # one global batch of 16 demonstrations

    # one SFT step: the gradient on the global batch
    loss = sft.accumulate_gradients(policy, tok, prompts, responses, batch, micro or 16 // dist.world())
    if dist.is_main():
        torch.save({"grad": flat_grad(policy), "loss": loss}, out / "sft_grad.pt")

    # one RM step: the Bradley-Terry gradient on a global batch of 8 pairs
    torch.manual_seed(1)  # the new score head: the same on every rank
    rm = models.load_scorer(model_dir, device)
    recs = [{"instruction": d["instruction"], "input": d["input"], "output_1": d["output"],
             "output_2": d["output"][::-1] + "x", "preference": 1 + i % 2} for i, d in enumerate(demos[:24])]
    pairs = reward.make_pairs(tok, recs, "compact", 32, 10)
    rm.zero_grad()
    stats = reward.accumulate_gradients(rm, pairs, list(range(8)), tok.pad_token_id, micro or 8 // dist.world())
    dist.sum_gradients(rm.parameters())
    if dist.is_main():
        torch.save({"grad": flat_grad(rm), "loss": stats["bt_loss"]}, out / "rm_grad.pt")

    # one RLP-UML step: the same pairs plus lambda * L_M on a fixed set P, RM and MIB heads
    import rlp
    from ib_loss import MIBHeads
    torch.manual_seed(2)
    rm = models.load_scorer(model_dir, device)
    heads = MIBHeads(rm.config.hidden_size, 16, 8).to(device)
    samples = [{"instruction": d["instruction"], "input": d["input"], "outputs": [d["output"], d["output"] + "1", "x"]}
               for d in demos[:8]]
    extra = rlp.uml_loss_fn(rm, heads, tok, samples, models.encode_prompts(tok, samples, "compact", 32), lam=0.5,
                            batch_size=8, max_response_len=10, seed=4, total_steps=10)
    rm.zero_grad()
    heads.zero_grad()
    reward.accumulate_gradients(rm, pairs, list(range(8)), tok.pad_token_id, micro or 8 // dist.world())
    loss, _ = extra(3)
    loss.backward()
    both = list(rm.parameters()) + list(heads.parameters())
    dist.sum_gradients(both)
    if dist.is_main():
        grad = torch.cat([p.grad.reshape(-1) for p in both])
        torch.save({"grad": grad, "loss": dist.all_sum(loss.item()).item()}, out / "uml_grad.pt")
    else:
        dist.all_sum(loss.item())

    # one PPO iteration; then every rank's weights
    ref = models.load_policy(model_dir, device)
    value = models.load_scorer(model_dir, device, fresh_head=True)
    unl = splits["unlabeled"]
    cfg = config.PPOConfig(ppo_iterations=1, rollout_batch=8, step_batch=4, ppo_epochs=2, ppo_lr=1e-3, kl_coef=0.05)
    ppo_args = dict(seeds=config.seeds(0), max_response_len=8, max_grad_norm=1.0, micro_batch=micro)
    start = torch.cat([p.detach().reshape(-1) for p in list(policy.parameters()) + list(value.parameters())])
    if dist.is_main():
        torch.save(start, out / "ppo_start.pt")
    train_ppo(policy, ref, rm, value, tok, models.encode_prompts(tok, unl, "compact", 32), unl, cfg, **ppo_args,
              show=False)
    mine = torch.cat([p.detach().reshape(-1) for p in list(policy.parameters()) + list(value.parameters())])
    every = [mine] if dist.world() == 1 else [torch.zeros_like(mine) for _ in range(dist.world())]
    if dist.world() > 1:
        torch.distributed.all_gather(every, mine)
    if dist.is_main():
        torch.save(every, out / "ppo_params.pt")
    dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
