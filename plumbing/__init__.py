"""Plumbing: what makes the pipeline run on one CPU or many GPUs, survive a kill, and read your
files, none of it part of the method. The algorithm (the repository's root) calls into here;
nothing here is needed to follow one step of the paper.

    dist.py        data parallelism with torch.distributed (shards, the gradient all-reduce, global sums)
    fsdp.py        --fsdp: every model sharded with FSDP2
    lora.py        --lora-rank: hand-written LoRA adapters, merged checkpoints
    checkpoint.py  PPO's resumable checkpoints
    runs.py        run folders, the loop over stages, the settings check, `Run` (what a stage gets)
    data.py        records and data files, with errors that name the file and line; atomic writes
    metrics.py     metrics.jsonl and TensorBoard
    models.py      loading and saving models and tokenizers (GGUF, chat templates, architectures)
    sampling.py    sampling and scoring many prompts in chunks, spread over the processes
"""
