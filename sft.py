"""Step 0, supervised fine-tuning: next-token cross-entropy on the response tokens only
(the prompt is context, not a target), EOS included so the model learns to stop."""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

import lm
from plumbing import data, dist, models


def sft_loss(model, prompt_ids, prompt_mask, resp_ids, resp_mask, num_tokens: float | None = None) -> torch.Tensor:
    """Step 0: -sum log pi(y_t | x, y_<t) over valid response tokens / num_tokens. num_tokens
    defaults to this batch's count; training passes the count of the whole global batch, so
    the loss means the same with any micro-batching and any number of processes."""
    logits = lm.response_logits(model, prompt_ids, prompt_mask, resp_ids, resp_mask)
    logprobs = lm.token_logprobs(logits, resp_ids, 1.0)
    return -(logprobs * resp_mask).sum() / (resp_mask.sum() if num_tokens is None else num_tokens)


def accumulate_gradients(model, tokenizer, prompts: list[list[int]], responses: list[list[int]],
                         batch: list[int], micro: int) -> float:
    """The gradient of the SFT loss of the global batch (indices `batch`) in every parameter's
    .grad, the same on every rank: this rank back-propagates its shard in micro-batches, each
    normalised by the global token count, then gradients are summed over ranks. Returns the
    global batch's loss."""
    device = next(model.parameters()).device
    num_tokens = sum(len(responses[i]) for i in batch)
    model.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for idx in dist.chunks(dist.shard(batch), micro):
        p_ids, p_mask = lm.left_pad([prompts[i] for i in idx], tokenizer.pad_token_id, device)
        r_ids, r_mask = lm.right_pad([responses[i] for i in idx], tokenizer.pad_token_id, device)
        with lm.autocast(device):
            loss = sft_loss(model, p_ids, p_mask, r_ids, r_mask, num_tokens)
        loss.backward()
        loss_sum += loss.item()
    dist.sum_gradients(model.parameters())
    return dist.all_sum(loss_sum).item()


def train_sft(model, tokenizer, prompts: list[list[int]], responses: list[list[int]], *, steps: int,
              batch_size: int, lr: float, warmup: int, max_grad_norm: float, seed: int, micro_batch: int = 0,
              metrics=None, show: bool = True) -> None:
    """AdamW, linear warm-up then cosine decay to 10% of lr, a fixed number of steps
    (more reproducible than a time budget). batch_size is global (all ranks)."""
    micro = dist.micro_size(dist.per_rank(batch_size, "--sft-batch"), micro_batch, "--sft-batch")
    dist.broadcast_parameters(model)
    opt = torch.optim.AdamW(dist.trainable_parameters(model), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))

    def lr_factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    batches = dist.Batches(len(prompts), batch_size, seed)
    model.train()
    bar = tqdm(range(steps), desc="sft", disable=not show, leave=False)
    for step in bar:
        loss = accumulate_gradients(model, tokenizer, prompts, responses, batches.next(), micro)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm).item()
        opt.step()
        sched.step()
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss:.3f}")
            if metrics is not None:
                metrics.log(step=step, loss=loss, lr=sched.get_last_lr()[0], grad_norm=grad_norm)
    model.eval()


def stage_sft(run, dest, metrics) -> None:
    """Step 0 in the pipeline: --model (or the built-in tiny Llama) fine-tuned on the demonstrations."""
    cfg = run.cfg
    recs = run.records("sft", data.DEMO)
    if cfg.model.model:
        with models.loading("--model", cfg.model.model):
            model, tokenizer = models.load_pretrained(cfg.model.model, run.load_device(),
                                                      chat=cfg.model.prompt_style == "chat")
    else:
        tokenizer = models.build_char_tokenizer()
        model = models.new_tiny_llama(tokenizer, cfg.model.model_hidden, cfg.model.model_layers, cfg.model.model_heads,
                                      cfg.model.max_prompt_len + cfg.model.max_response_len, run.seeds.base).to(run.device)
    model = run.prepare(model, train=True)
    prompts = run.prompts(tokenizer, recs)
    responses = lm.encode_responses(tokenizer, [r["output"] for r in recs], cfg.model.max_response_len)
    run.log(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters ("
            f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trained), {len(recs)} "
            f"demonstrations, prompt style {cfg.model.prompt_style}, responses end with {tokenizer.eos_token}")
    train_sft(model, tokenizer, prompts, responses, steps=cfg.sft.sft_steps, batch_size=cfg.sft.sft_batch,
              lr=cfg.sft.sft_lr, warmup=cfg.sft.sft_warmup, max_grad_norm=cfg.run.max_grad_norm, seed=run.seeds.sft,
              micro_batch=cfg.scale.micro_batch, metrics=metrics, show=run.show)
    run.save_model(model, tokenizer, dest)
