"""Tiny randomly initialised models saved to a folder, standing in for real Hugging Face
checkpoints in the tests: a Llama with a byte-level BPE tokenizer (with or without a chat
template, as real chat and base models come), and BERT-style NLI and sentence encoders."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models as tok_models, normalizers, pre_tokenizers, processors, trainers
from transformers import (BertConfig, BertForSequenceClassification, BertModel, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

import config
from plumbing import models


def ppo_config(**kw) -> config.PPOConfig:
    """PPO's settings for one small test iteration; each test overrides what it needs."""
    base = dict(ppo_iterations=1, rollout_batch=4, step_batch=2, ppo_epochs=1, ppo_lr=1e-3, kl_coef=0.1,
                temperature=1.0, whiten_rewards=True)
    return config.PPOConfig(**{**base, **kw})


class RowLog:
    """ppo.PPOLog's interface, keeping each iteration's row in `rows` and writing nothing."""

    def __init__(self):
        self.rows = []

    def iteration(self, row, batch, records, bar=None):
        self.rows.append(row)

    def sample_table(self, *args):
        pass

# ChatML, the format of SmolLM2's template (shortened: no default system prompt), with a BOS as
# Llama/Mistral templates write one: encode_prompts must not add a second
CHATML = ("{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def bpe_tokenizer(corpus: list[str], chat: bool, vocab_size: int = 400,
                  eos: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus` (lossless on any text, like GPT-2's) that
    starts every encoded text with a BOS <s> (as Llama's does). chat: ChatML special tokens,
    EOS = <|im_end|> and a chat template; else a base model's <|endoftext|> EOS and no template.
    No pad token: load_tokenizer must add one, as for most real models."""
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]
    tok = Tokenizer(tok_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos or ("<|im_end|>" if chat else "<|endoftext|>"),
                                  bos_token="<s>", clean_up_tokenization_spaces=False)
    if chat:
        out.chat_template = CHATML
    return out


def save_tiny_llama(path, corpus: list[str], chat: bool, seed: int = 0) -> str:
    """A 2-layer, 32-wide random Llama and its tokenizer, saved like any Hugging Face checkpoint."""
    path = Path(path)
    tokenizer = bpe_tokenizer(corpus, chat)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def word_tokenizer(words: list[str], max_length: int = 64) -> PreTrainedTokenizerFast:
    """A word-level BERT-style tokenizer ([CLS] a [SEP] b [SEP]); other words are [UNK]."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + list(dict.fromkeys(words)))}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=max_length)


def save_tiny_bert(path, words: list[str], nli: bool, seed: int = 0) -> str:
    """nli: a 3-way classifier with MNLI's labels (as --nli-model); else a bare encoder (as
    --embedding-model)."""
    tokenizer = word_tokenizer(words)
    cfg = dict(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(seed)
    if nli:
        labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
        model = BertForSequenceClassification(BertConfig(num_labels=3, id2label=labels,
                                                         label2id={v: k for k, v in labels.items()}, **cfg))
    else:
        model = BertModel(BertConfig(**cfg))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def prompt_corpus(texts: list[str]) -> list[str]:
    """What the BPE is trained on: the texts and the prompt formats they will be wrapped in."""
    return texts + [models.ALPACA_PROMPT, models.ALPACA_PROMPT_NO_INPUT, CHATML] * 3
