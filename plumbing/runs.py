"""Run folders and the loop over stages: what makes `python train.py` safe to kill and re-run.

Each stage builds its outputs in a hidden `.STAGE.partial` folder and renames it into place with
a DONE marker only when everything is written (`stage_output`); `run_stages` skips complete
stages, resumes a killed PPO stage from its checkpoints, locks the folder against a second run,
checks that the saved settings (config.json) match, and records each stage's wall time. `Run`
is what every stage function gets: the settings, the device, the folders, loading and saving.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch

import config
from plumbing import data, dist, fsdp, lora, models
from plumbing import metrics as logs
from plumbing.data import remove

DONE = "DONE"


def is_complete(out_dir, stage: str) -> bool:
    return (Path(out_dir) / stage / DONE).is_file()


def require(out_dir, stage: str, hint: str | None = None) -> Path:
    """The folder of an earlier stage, or a clear error if it has not finished."""
    path = Path(out_dir) / stage
    if not is_complete(out_dir, stage):
        raise SystemExit(f"error: {path} is missing or incomplete; run `python train.py --stage "
                         f"{hint or stage} --out {out_dir}` first")
    return path


def finish_interrupted(out_dir, stage: str) -> None:
    """A process killed between the two renames at the end of `stage_output` leaves a complete
    `.STAGE.partial` (it has DONE) and no STAGE folder: finish the job."""
    final, partial = Path(out_dir) / stage, Path(out_dir) / f".{stage}.partial"
    if (partial / DONE).is_file() and not final.exists():
        os.replace(partial, final)
        remove(Path(out_dir) / f".{stage}.old")


@contextmanager
def run_lock(out_dir):
    """One run at a time in a run folder: an exclusive lock on DIR/.lock, which the OS releases
    however the process ends (SIGKILL included). Two runs writing the same stages would mix
    their outputs. (No lock on systems without fcntl, e.g. Windows.)"""
    try:
        import fcntl
    except ImportError:
        yield
        return
    f = open(Path(out_dir) / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown pid"
        f.close()
        raise SystemExit(f"error: another run is using {out_dir} ({holder}); wait for it to finish or stop it") \
            from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    try:
        yield
    finally:
        f.close()


@contextmanager
def stage_output(out_dir, stage: str, resume: bool = False, main: bool = True):
    """Build a stage's outputs in a hidden `.STAGE.partial` folder and move it into place
    only when everything, including the DONE marker, is written. A stage that fails or is
    killed leaves its previous complete output (if any) untouched and no half-written one.
    resume=True keeps what a killed attempt left in `.STAGE.partial` (PPO's checkpoints);
    otherwise the stage starts from an empty folder. Only the main process (rank 0) touches
    the folders; the others get the same path, to read from."""
    final = Path(out_dir) / stage
    partial = Path(out_dir) / f".{stage}.partial"
    if main:
        if not resume or (partial / DONE).exists():
            remove(partial)
        partial.mkdir(parents=True, exist_ok=True)
    yield partial
    if not main:
        return
    (partial / DONE).write_text("complete\n")
    old = Path(out_dir) / f".{stage}.old"
    remove(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    remove(old)


CHECKPOINTS = "checkpoints"  # PPO's resumable checkpoints, inside the stage's .partial folder


class Run:
    """What every stage needs: settings, device, folders, loading, saving and logging.
    `hints` maps a stage folder to the --stage value that makes it (for error messages)."""
    CHECKPOINTS = CHECKPOINTS

    def __init__(self, cfg: config.Config, device, hints: dict[str, str] | None = None):
        self.cfg, self.out, self.device = cfg, Path(cfg.run.out), device
        self.seeds = config.seeds(cfg.run.seed)
        self.hints = hints or {}
        self.main = dist.is_main()  # only rank 0 writes files, logs and shows progress bars
        self.show = not cfg.run.quiet and self.main

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    # ---- reading
    def require(self, stage: str) -> Path:
        """An earlier stage's folder, or a clear error naming the --stage that makes it."""
        return require(self.out, stage, hint=self.hints.get(stage))

    def read(self, stage: str, name: str, schema=data.PREFERENCE) -> list[dict]:
        """Records of a file an earlier stage wrote (prefs.jsonl, P.jsonl, ...)."""
        return data.read_records(self.require(stage) / name, schema, keep_where=True)

    def records(self, split: str, schema=data.INSTRUCTION) -> list[dict]:
        """A split of the data stage (sft, pref, unlabeled, eval)."""
        return data.read_records(self.out / "data" / f"{split}.jsonl", schema, keep_where=True)

    def tokenizer(self):
        return models.load_tokenizer(self.require("sft"))

    def prompts(self, tokenizer, records):
        return models.encode_prompts(tokenizer, records, self.cfg.model.prompt_style, self.cfg.model.max_prompt_len)

    def policy(self, path, train: bool = False):
        return self.prepare(models.load_policy(path, self.load_device()), train)

    def scorer(self, path, fresh_head: bool = False, train: bool = False):
        return self.prepare(models.load_scorer(path, self.load_device(), fresh_head=fresh_head), train, head=True)

    def load_device(self) -> torch.device:
        """Where a model is loaded. Under --fsdp only rank 0 reads the weights, into host memory, and
        every other rank builds the architecture on the meta device (no memory); `prepare` shards
        the models and fills every rank's shards from rank 0 (fsdp.shard). Otherwise: the device."""
        if not self.cfg.scale.fsdp:
            return self.device
        return torch.device("cpu") if self.main else torch.device("meta")

    def prepare(self, model, train: bool, head: bool = False):
        """A loaded model as the run's options want it: LoRA adapters (to train; head: a score head
        that trains too), gradient checkpointing (to train), FSDP sharding (every model)."""
        scale = self.cfg.scale
        if train and scale.lora_rank:
            lora.add_adapters(model, scale.lora_rank, scale.lora_alpha, trainable_head=head)
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported() and (not train or scale.lora_rank):
            models.frozen_to_bf16(model, train)  # what never trains, in the dtype it computes in
        models.gradient_checkpointing(model, train and scale.gradient_checkpointing)
        return fsdp.shard(model, self.device, train, scale.fsdp_shard_size) if scale.fsdp else model

    # ---- writing: rank 0 only (every rank holds the same weights and gathered data)
    def save_model(self, model, tokenizer, path) -> None:
        """A plain Hugging Face folder, written by rank 0: under --fsdp the full weights gathered on
        rank 0's CPU (every rank takes part), with LoRA the adapters merged in on the CPU (rank 0
        only) and saved on their own beside them. A weight tied to another (a tied LM head) is
        written once."""
        state = fsdp.full_state_dict(model) if fsdp.is_sharded(model) else None
        if not self.main:
            return
        if lora.has_adapters(model):
            state = model.state_dict() if state is None else state
            adapters = lora.adapter_state_dict(state, lora.trainable_names(model))
            state = lora.merged_state_dict(state, model.lora_settings)
        if state is not None:
            state = models.without_tied_copies(model, state)
        models.save_pretrained(model, tokenizer, path, state)
        if lora.has_adapters(model):
            lora.save_adapters(adapters, model.lora_settings, path)

    def write_records(self, path, rows, where: bool = False) -> None:
        if self.main:
            data.write_records(path, rows, where=where)

    def write_json(self, path, obj) -> None:
        if self.main:
            data.write_json(path, obj)

    def write_text(self, path, text: str) -> None:
        if self.main:
            data.atomic_write_text(path, text)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- the loop over stages

def run_stages(cfg: config.Config, device, todo: list[tuple[str, object]], order: list[str], resumable: set[str],
               hints: dict[str, str], check_models=None, summaries: set[str] = frozenset()) -> None:
    """Run `todo` ((folder, stage function) pairs) in the run folder: `order` is every stage
    folder in pipeline order, `resumable` the stages that keep a killed attempt's checkpoints,
    `summaries` the stages that read every earlier one (eval): complete, they are redone when an
    earlier stage ran in the same command (a stage added to a finished run, e.g. --controls)."""
    out = Path(cfg.run.out)
    if cfg.run.tensorboard:  # every rank: a missing package stops all of them before any work
        logs.summary_writer_class()
    check_world(cfg)
    resolve_prompt_style(cfg)
    if check_models is not None:
        check_models(cfg)
    run = Run(cfg, device, hints)
    lock = contextlib.nullcontext()
    if run.main:  # rank 0 owns the run folder: it locks it, checks and saves the settings
        out.mkdir(parents=True, exist_ok=True)
        lock = run_lock(out)
    with lock:
        if run.main:
            data.write_json(out / "config.json", check_settings(cfg, out))
        dist.barrier()
        run_plan(cfg, run, out, todo, order, resumable, summaries)


def run_plan(cfg: config.Config, run: Run, out: Path, todo, order: list[str], resumable: set[str],
             summaries: set[str] = frozenset()) -> None:
    run.log(f"RLP run in {out}  device={run.device}  processes={dist.world()}  stage={cfg.run.stage}")
    auto_data = cfg.run.stage not in ("all", "data")  # the built-in splits are cheap and deterministic: on demand
    if run.main:
        for name in order:
            finish_interrupted(out, name)  # a kill between the two renames that complete a stage
            if is_complete(out, name):
                remove(out / name / CHECKPOINTS)  # a kill before a complete stage's checkpoints went
    t_all = time.time()
    ran = False  # a stage before this one ran in this command
    for name, fn in todo:
        done = is_complete(out, name) and (name != "data" or data_is_current(cfg, out))
        done = dist.broadcast_object(done)  # every rank takes rank 0's decision
        redo = (cfg.run.force and not (auto_data and name == "data")) or (name in summaries and ran and done)
        if redo and not cfg.run.force:
            run.log(f"[{name}] complete, redone: an earlier stage ran")
        if done and not redo:
            run.log(f"[{name}] complete, skipped (--force to redo)")
            continue
        ran = True
        run.log(f"[{name}]")
        t0 = time.time()
        seed_everything(run.seeds.stage(name))  # each stage's randomness independent of the others
        resume = name in resumable and not redo  # keep a killed attempt's PPO checkpoints
        with stage_output(out, name, resume=resume, main=run.main) as dest:
            dist.barrier()  # rank 0 has made the folder
            tb = None  # TensorBoard's run of the stage is kept exactly when its log is (a resumed PPO stage)
            if cfg.run.tensorboard and run.main:
                tb = logs.tensorboard_writer(out / "tb" / name, fresh=not (dest / "metrics.jsonl").is_file())
            metrics = logs.Metrics(dest / "metrics.jsonl" if run.main else None, tensorboard=tb)
            try:
                fn(run, dest, metrics)
                metrics.log(stage_seconds=round(time.time() - t0, 1))
            finally:
                metrics.close()
                if tb is not None:
                    tb.close()
            dist.barrier()  # every rank is done with the stage before rank 0 moves it into place
        if run.main:
            remove(out / name / CHECKPOINTS)  # the stage is complete: its checkpoints are not needed
            for later in order[order.index(name) + 1:]:
                remove(out / f".{later}.partial")  # a killed later stage built on the old output
            with open(out / "timings.jsonl", "a") as f:
                f.write(json.dumps({"stage": name, "seconds": round(time.time() - t0, 1),
                                    "processes": dist.world()}) + "\n")
        dist.barrier()  # the next stage reads this one's outputs
        run.log(f"[{name}] done in {time.time() - t0:.1f}s")
    run.log(f"finished in {time.time() - t_all:.1f}s")


# ----------------------------------------------------------------------------- checks before the first stage

def check_settings(cfg: config.Config, out: Path) -> dict:
    """The settings are saved with the run (config.json). A run folder made with other settings
    is not silently mixed with new ones: a difference is an error unless --force."""
    settings = {k: v for k, v in cfg.flat().items() if k not in config.RUN_ONLY}
    settings["data_files"] = data_sources(cfg)  # contents, not only paths
    saved_path = out / "config.json"
    if saved_path.is_file() and not cfg.run.force:
        saved = json.loads(saved_path.read_text())
        saved = {k: v for k, v in saved.items() if k not in config.RUN_ONLY}
        # a setting newer than the run folder: the run used its default
        saved = {**{k: v for k, v in config.defaults().items() if k in settings}, **saved}
        diff = [f"--{k.replace('_', '-')}: {saved.get(k, '(not set)')} in the run, {settings.get(k, '(not set)')} now"
                for k in sorted(set(saved) | set(settings))
                if json.dumps(saved.get(k)) != json.dumps(settings.get(k))  # as saved: NaN equals NaN
                and k != "data_files"]
        old_files, new_files = saved.get("data_files") or {}, settings["data_files"] or {}
        changed = [f"{old_files[k]['path']}" for k in old_files if k in new_files and old_files[k] != new_files[k]
                   and old_files[k]["path"] == new_files[k]["path"]]
        if changed:
            diff.append(f"data file contents changed since the run was made: {', '.join(changed)}")
        if diff:
            raise SystemExit(f"error: {out} was made with other settings:\n  " + "\n  ".join(diff) +
                             "\nuse another --out, the same settings, or --force to redo the requested stages "
                             "with the new ones")
    return settings


def check_world(cfg: config.Config) -> None:
    """Global batch sizes must split evenly over the processes, and each process's share over
    --micro-batch: a clear error up front, not hours into a run."""
    uml = cfg.run.stage in ("all", "rlp_reward") and cfg.run.method != "spg"
    flat = cfg.flat()
    for key, flag in config.GLOBAL_BATCHES.items():
        if key == "uml_batch" and not uml:
            continue
        share = dist.per_rank(flat[key], flag)
        if key != "uml_batch":  # the UML term is one forward per step (rlp.uml_loss_fn)
            dist.micro_size(share, cfg.scale.micro_batch, flag)


def find_models(cfg: config.Config, stages: set[str], scorers: bool) -> list[tuple[str, str, str]]:
    """Every model a requested stage (folders `stages`; `scorers`: one of them builds a reward or
    value model from --model) will load, found (not loaded) before the first stage runs: a typo
    in --nli-model must not surface after hours of SFT and PPO. Returns what was checked: (flag,
    name, kind) for each model."""
    from transformers import AutoConfig

    rlp, ev, model = cfg.rlp, cfg.eval, cfg.model.model
    need = []  # (flag, name, kind)
    if "rlp_reward_spg" in stages and rlp.synthetic_labels == "consistency":
        if rlp.spg_cluster == "nli":
            need.append(("--nli-model", rlp.nli_model, "nli"))
        elif rlp.spg_cluster == "embedding":
            need.append(("--embedding-model", rlp.embedding_model, "embedding"))
    if "eval" in stages and ev.eval_judge == "lm":
        need.append(("--judge-model" if ev.judge_model else "--model", ev.judge_model or model, "lm"))
    if "eval" in stages and ev.eval_judge == "rm" and ev.judge_model:
        need.append(("--judge-model", ev.judge_model, "rm"))
    checked = []
    if model and scorers:  # the RM and value model: --model's family
        with models.loading("--model", model):
            models.check_scorer_support("--model", model)
        checked.append(("--model", model, "scorer"))
    for flag, name, kind in need:
        with models.loading(flag, name or "(all-MiniLM-L6-v2)"):
            if kind == "embedding" and not name:
                models.default_embedding_model()
            elif kind == "lm":
                folder, gguf_file = models.resolve_model(name)
                if not gguf_file:  # a GGUF file: resolve_model has already checked that it exists
                    AutoConfig.from_pretrained(folder)
            else:
                found = AutoConfig.from_pretrained(name)
                if kind == "rm" and not any(a.endswith("ForSequenceClassification") for a in found.architectures or []):
                    raise ValueError(f"not a reward model (architectures: {found.architectures}); give a reward "
                                     f"model folder, e.g. another run's reward/")
        checked.append((flag, name, kind))
    return checked


def data_sources(cfg: config.Config) -> dict | None:
    """Your data files, each with the SHA-256 of its contents (None for the built-in task). Saved in
    config.json (a run folder is not silently reused after a file changed) and beside the data
    stage's output (data/sources.json: `--force` redoes that stage when the files differ)."""
    if cfg.data.builtin:
        return None
    return {name: {"path": path, "sha256": file_sha256(path)} for name, path in cfg.data.files.items()}


def file_sha256(path: str) -> str | None:
    """A file's SHA-256 (the settings check, the data stage's skip decision and its output all need
    it); None for a missing file (the data stage then says so). Read once per version of the file:
    the cache is keyed by its size and modification time too, so a process that runs train.main
    twice (a notebook, a test) sees a file changed in between."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _sha256(str(p), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def data_is_current(cfg: config.Config, out: Path) -> bool:
    """The data stage's output was made from the files (or the built-in task) asked for now."""
    saved = out / "data" / "sources.json"
    return (json.loads(saved.read_text()) if saved.is_file() else None) == data_sources(cfg)


def resolve_prompt_style(cfg: config.Config) -> None:
    """--prompt-style auto for a real model: chat when its tokenizer has a chat template, else
    alpaca. Resolved before config.json is written, so every stage formats prompts the same way."""
    if cfg.model.prompt_style in ("auto", "chat") and cfg.model.model:
        with models.loading("--model", cfg.model.model):
            tokenizer = models.base_tokenizer(cfg.model.model)
        style = models.default_prompt_style(tokenizer)
        if cfg.model.prompt_style == "chat" and style != "chat":
            raise SystemExit(f"error: --prompt-style chat, but the tokenizer of {cfg.model.model} has no chat "
                             f"template")
        cfg.model.prompt_style = style
