"""Sampling and scoring many prompts at once, spread over the processes: each rank works on its
shard in chunks, and every rank gets all the results back in the original order (Step 1's pairs,
Step 4's set P, evaluation, RM normalisation). The sampler itself is lm.sample.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

import lm
from plumbing import dist, fsdp


@torch.no_grad()
def generate_texts(model, tokenizer, prompt_ids: list[list[int]], n: int, temperature: float, max_new_tokens: int,
                   batch_size: int, generator: torch.Generator | None = None, desc: str | None = None,
                   show: bool = True) -> list[list[str]]:
    """n sampled response texts for each prompt, in chunks of `batch_size` sequences. With
    several processes each samples its shard of the prompts (with its own generator, see
    `make_generator`) and every rank gets all the texts back, in order."""
    device = next(model.parameters()).device
    model.eval()
    local = dist.shard(list(range(len(prompt_ids))))
    n_local = len(local)
    local += fsdp.lockstep_padding(model, len(prompt_ids))  # under --fsdp: as many chunks as every rank
    flat = [prompt_ids[i] for i in local for _ in range(n)]
    texts = []
    for i in tqdm(range(0, len(flat), batch_size), desc=desc, disable=not show or desc is None, leave=False):
        ids, mask = lm.left_pad(flat[i:i + batch_size], tokenizer.pad_token_id, device)
        with lm.autocast(device):
            r_ids, _, r_mask = lm.sample(model, ids, mask, max_new_tokens, temperature, tokenizer.eos_token_id,
                                      tokenizer.pad_token_id, generator)
        texts += lm.decode_responses(tokenizer, r_ids, r_mask)
    return dist.gather([texts[i * n:(i + 1) * n] for i in range(n_local)])


@torch.no_grad()
def score_texts(rm, tokenizer, prompt_ids: list[list[int]], responses: list[str], max_response_len: int,
                batch_size: int) -> torch.Tensor:
    """r(x, y) for aligned lists of prompts and response texts (CPU tensor); each rank scores its
    shard and every rank gets all the scores back, in order."""
    device = next(rm.parameters()).device
    rm.eval()
    local = dist.shard(list(range(len(responses))))
    n_local = len(local)
    local += fsdp.lockstep_padding(rm, len(responses))  # under --fsdp: as many chunks as every rank
    resp = lm.encode_responses(tokenizer, [responses[i] for i in local], max_response_len)
    prompts = [prompt_ids[i] for i in local]
    out = []
    for i in range(0, len(resp), batch_size):
        p_ids, p_mask = lm.left_pad(prompts[i:i + batch_size], tokenizer.pad_token_id, device)
        r_ids, r_mask = lm.right_pad(resp[i:i + batch_size], tokenizer.pad_token_id, device)
        with lm.autocast(device):
            out += lm.sequence_scores(rm, p_ids, p_mask, r_ids, r_mask).float().cpu().tolist()
    return torch.tensor(dist.gather(out[:n_local]), dtype=torch.float32)


def make_generator(device, seed: int) -> torch.Generator:
    """A sampling generator; each rank gets its own seed (dist.rank_seed), rank 0 keeps `seed`."""
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    g.manual_seed(dist.rank_seed(seed))
    return g

