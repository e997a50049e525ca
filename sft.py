"""Step 0, supervised fine-tuning: next-token cross-entropy on the response tokens only
(the prompt is context, not a target), EOS included so the model learns to stop."""
from __future__ import annotations

import math
import random

import torch
from tqdm import tqdm

import models
from models import autocast


def sft_loss(model, prompt_ids, prompt_mask, resp_ids, resp_mask) -> torch.Tensor:
    """Step 0: -mean log pi(y_t | x, y_<t) over valid response tokens of the batch."""
    logits = models.response_logits(model, prompt_ids, prompt_mask, resp_ids, resp_mask)
    logprobs = models.token_logprobs(logits, resp_ids, 1.0)
    return -(logprobs * resp_mask).sum() / resp_mask.sum()


def train_sft(model, tokenizer, prompts: list[list[int]], responses: list[list[int]], *, steps: int,
              batch_size: int, lr: float, warmup: int, max_grad_norm: float, seed: int, metrics=None,
              show: bool = True) -> None:
    """AdamW, linear warm-up then cosine decay to 10% of lr, a fixed number of steps
    (more reproducible than a time budget, MEASURED.md)."""
    device = next(model.parameters()).device
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    order: list[int] = []
    model.train()
    bar = tqdm(range(steps), desc="sft", disable=not show, leave=False)
    for step in bar:
        if len(order) < batch_size:
            fresh = list(range(len(prompts)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch_size], order[batch_size:]
        p_ids, p_mask = models.left_pad([prompts[i] for i in idx], tokenizer.pad_token_id, device)
        r_ids, r_mask = models.right_pad([responses[i] for i in idx], tokenizer.pad_token_id, device)
        with autocast(device):
            loss = sft_loss(model, p_ids, p_mask, r_ids, r_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm).item()
        opt.step()
        sched.step()
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if metrics is not None:
                metrics.log(step=step, loss=loss.item(), lr=sched.get_last_lr()[0], grad_norm=grad_norm)
    model.eval()
