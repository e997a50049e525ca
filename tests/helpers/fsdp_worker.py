"""A worker for tests/scale/test_fsdp.py: `python tests/helpers/fsdp_worker.py OUT plain|fsdp LORA_RANK`, with one
process or under torchrun (plain, fsdp, or hsdp: FSDP on a 2-D mesh, replicated across groups of
one process). Trains a tiny Llama for two SFT steps, two RM steps (with a held-out
accuracy and scores over an odd number of items, so the ranks' shards differ in length) and one
PPO iteration, sharded with FSDP2 (`fsdp`) or not (`plain`), with LoRA adapters of that rank (0 =
none). Rank 0 saves, under OUT:

  sft.pt, rm.pt, ppo.pt     full state dicts after training (gathered under FSDP) and statistics;
                            sft.pt and rm.pt also hold the gradient of the first global batch, taken
                            before any optimizer step (full, gathered under FSDP), and rm.pt the
                            scores and accuracy of the RM as initialised (the same weights everywhere)
  sampler_RANK.pt           greedy sampling where rank 0's rows all end at the first step and
                            rank 1's never end, from the sharded model and from an unsharded copy;
                            the number of parameter elements this rank holds; where this rank built
                            the models it shards, and the sharded model's non-persistent buffers

Under FSDP the models are loaded as runs.Run.load_device says: rank 0 reads the weights, every
other rank builds the architecture on the meta device, and fsdp.shard fills its shards.
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from plumbing import dist  # noqa: E402
from plumbing import fsdp  # noqa: E402
from plumbing import lora  # noqa: E402
from plumbing import models  # noqa: E402
import reward  # noqa: E402
import sft  # noqa: E402
import task  # noqa: E402
import config  # noqa: E402
from ppo import train_ppo  # noqa: E402
import lm
from plumbing import sampling


def main(out: Path, mode: str, rank: int) -> None:
    device = dist.init()
    torch.set_num_threads(1)
    sharded = mode in ("fsdp", "hsdp")  # hsdp: a 2-D mesh, each process a whole shard group, replicated
    load_device = torch.device("meta") if sharded and not dist.is_main() else device  # runs.Run.load_device

    def prepare(model, train: bool, head: bool = False):
        if train and rank:
            lora.add_adapters(model, rank, 2.0 * rank, trainable_head=head)
        return fsdp.shard(model, device, train, shard_size=1 if mode == "hsdp" else 0) if sharded else model

    def full(model) -> dict:
        return fsdp.full_state_dict(model) if sharded else {k: v.clone() for k, v in model.state_dict().items()}

    def full_grads(model) -> dict:
        """Every gradient of the model, summed over ranks (a collective under FSDP), then cleared."""
        grads = {name: (p.grad.full_tensor() if sharded else p.grad).clone()
                 for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return grads

    tok = models.build_char_tokenizer()
    model_dir = out / "tiny"
    if dist.is_main():
        models.save_pretrained(models.new_tiny_llama(tok, 32, 2, 2, 48, seed=0), tok, model_dir)
    dist.barrier()
    splits = task.make_splits(0, n_sft=64, n_pref=32, n_unlabeled=32, n_eval=4, sft_noise=0.3)
    demos = splits["sft"]
    prompts = models.encode_prompts(tok, demos, "compact", 32)
    responses = lm.encode_responses(tok, [r["output"] for r in demos], 10)

    # the gradient of one global batch of 16, then two SFT steps (AdamW, clipping) on global batches of 16
    torch.manual_seed(5)
    policy = prepare(models.load_policy(model_dir, load_device), train=True)
    sft.accumulate_gradients(policy, tok, prompts, responses, list(range(3, 19)), 16 // dist.world())
    sft_grad = full_grads(policy)
    sft.train_sft(policy, tok, prompts, responses, steps=2, batch_size=16, lr=1e-2, warmup=1, max_grad_norm=0.5,
                  seed=0, show=False)
    state = full(policy)
    if dist.is_main():
        torch.save({"state": state, "grad": sft_grad}, out / "sft.pt")

    # two RM steps on global batches of 8 pairs; accuracy and scores over 5 items (uneven shards)
    torch.manual_seed(1)  # the new score head (and adapters): the same on every rank
    rm = prepare(models.load_scorer(model_dir, load_device), train=True, head=True)
    recs = [{"instruction": d["instruction"], "input": d["input"], "output_1": d["output"],
             "output_2": d["output"][::-1] + "x", "preference": 1 + i % 2} for i, d in enumerate(demos[:24])]
    pairs = reward.make_pairs(tok, recs, "compact", 32, 10)
    # as initialised (the same weights in every run): scores and accuracy over 5 items (uneven shards)
    acc = reward.pairwise_accuracy(rm, pairs[:5], tok.pad_token_id, batch_size=2)
    scores = sampling.score_texts(rm, tok, prompts[:5], [r["output"] for r in demos[:5]], 10, batch_size=2)
    with torch.no_grad():
        chosen, rejected = reward.pair_rewards(rm, pairs[:5], tok.pad_token_id)  # every rank: all 5
    margins = chosen - rejected
    # the gradient of one global batch of 8 pairs, then two RM steps on global batches of 8
    reward.accumulate_gradients(rm, pairs, list(range(8)), tok.pad_token_id, 8 // dist.world())
    dist.sum_gradients(rm.parameters())
    rm_grad = full_grads(rm)
    reward.train_reward_model(rm, pairs, tok.pad_token_id, lr=1e-2, batch_size=8, epochs=0.67, max_grad_norm=0.5,
                              seed=0, show=False)
    state = full(rm)
    if dist.is_main():
        torch.save({"state": state, "grad": rm_grad, "accuracy": acc, "scores": scores, "margins": margins},
                   out / "rm.pt")
    # a forward without a backward (a measurement, as RLP-UML's before re-learning) leaves a training
    # model's root gathered under FSDP; the training that follows must still hold the sharded weights
    reward.pairwise_accuracy(rm, pairs[:5], tok.pad_token_id, batch_size=2)
    reward.train_reward_model(rm, pairs, tok.pad_token_id, lr=1e-2, batch_size=8, epochs=0.34, max_grad_norm=0.5,
                              seed=3, show=False)
    state = full(rm)
    if dist.is_main():
        torch.save({"state": state}, out / "rm_after_probe.pt")

    # scores and values under FSDP's bf16 policy and bf16 autocast (the GPU's setting, here on the CPU):
    # the backbone computes in bf16, the score head in float32 (its own float32 unit)
    if sharded:
        torch.manual_seed(1)
        plain_rm = models.load_scorer(model_dir, device)
        torch.nn.init.normal_(plain_rm.score.weight, std=2.0)  # raw scores of a few units to a few dozen
        head = plain_rm.score.weight.detach().clone()
        bf16_rm = fsdp.shard(copy.deepcopy(plain_rm), device, shard_size=1 if mode == "hsdp" else 0, bf16=True)
        p_ids, p_mask = lm.left_pad(prompts[:4], tok.pad_token_id, device)
        r_ids, r_mask = lm.right_pad(responses[:4], tok.pad_token_id, device)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = lm.last_token_hidden(bf16_rm, p_ids, p_mask, r_ids, r_mask)
            got = lm.sequence_scores(bf16_rm, p_ids, p_mask, r_ids, r_mask)
            values = lm.token_values(bf16_rm, p_ids, p_mask, r_ids, r_mask)
        with torch.no_grad():
            fp32 = lm.sequence_scores(plain_rm, p_ids, p_mask, r_ids, r_mask)
        if dist.is_main():
            torch.save({"scores": got, "hidden_head": (hidden.float() @ head.T).squeeze(-1), "fp32": fp32,
                        "values": values, "score_dtype": bf16_rm.score.weight.dtype,
                        "layer_dtype": next(models.decoder_layers(bf16_rm)[0].parameters()).dtype}, out / "bf16.pt")

    # one PPO iteration from the first checkpoint
    torch.manual_seed(2)
    policy = prepare(models.load_policy(model_dir, load_device), train=True)
    ref = lora.reference(policy) if rank else prepare(models.load_policy(model_dir, load_device), train=False)
    rm = prepare(models.load_scorer(model_dir, load_device), train=False)
    value = prepare(models.load_scorer(model_dir, load_device, fresh_head=True), train=True, head=True)
    unl = splits["unlabeled"]
    cfg = config.PPOConfig(ppo_iterations=1, rollout_batch=8, step_batch=4, ppo_epochs=2, ppo_lr=1e-2, kl_coef=0.05)
    ppo_args = dict(seeds=config.seeds(0), max_response_len=8, max_grad_norm=0.5)
    rows = []

    class Log:  # ppo.PPOLog's interface: keep the rows
        def iteration(self, row, batch, records, bar=None):
            rows.append(row)

        def sample_table(self, *args):
            pass
    train_ppo(policy, ref, rm, value, tok, models.encode_prompts(tok, unl, "compact", 32), unl, cfg, **ppo_args,
              log=Log(), show=False)
    states = {"policy": full(policy), "value": full(value)}
    if dist.is_main():
        torch.save({**states, "row": {k: v for k, v in rows[0].items() if k != "samples"}}, out / "ppo.pt")

    # sampling where the ranks' rows end at different times (greedy): rank 0's EOS is the token its
    # row picks first, so it ends at once; rank 1's EOS is never produced, so it runs to the limit
    plain = models.load_policy(model_dir, device)
    sharded_policy = prepare(models.load_policy(model_dir, load_device), train=False)
    p_ids, p_mask = lm.left_pad([prompts[dist.rank()]], tok.pad_token_id, device)
    with torch.no_grad():
        first = plain(input_ids=p_ids, attention_mask=p_mask).logits[0, -1].argmax().item()
    eos = first if dist.rank() == 0 else len(tok) + 1
    gathers = []  # (elements) of every all-gather FSDP makes while this rank samples
    if sharded:
        from torch.distributed.fsdp._fully_shard import _fsdp_collectives as collectives
        real = collectives.DefaultAllGather.__call__

        def counted(self, *args, **kwargs):  # FSDP passes output_tensor by keyword
            output = kwargs["output_tensor"] if "output_tensor" in kwargs else args[0]
            gathers.append(output.numel() * output.element_size())
            return real(self, *args, **kwargs)
        collectives.DefaultAllGather.__call__ = counted
    got = lm.sample(sharded_policy, p_ids, p_mask, 6, 0.0, eos, tok.pad_token_id)
    if sharded:
        collectives.DefaultAllGather.__call__ = real
    want = lm.sample(plain, p_ids, p_mask, 6, 0.0, eos, tok.pad_token_id)
    local = sum((p.to_local() if sharded else p).numel() for p in sharded_policy.parameters())
    units = sum(isinstance(m, fsdp.FSDPModule) for m in sharded_policy.modules())
    torch.save({"got": got, "want": want, "local_numel": local, "gathers": gathers, "units": units,
                "model_bytes": sum(p.numel() * p.element_size() for p in plain.parameters()),
                "numel": sum(p.numel() for p in sharded_policy.parameters()), "load_device": load_device.type,
                "buffers": {n: b.clone() for n, b in sharded_policy.named_buffers()},
                "plain_buffers": {n: b.clone() for n, b in plain.named_buffers()}}, out / f"sampler_{dist.rank()}.pt")
    dist.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
