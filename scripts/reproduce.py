"""Every run behind RESULTS.md, on the built-in task; one command runs what is missing and writes the report.

    python scripts/reproduce.py                     # the main table: 5 seeds, with the controls (~100 min, 2 cores)
    python scripts/reproduce.py --seeds 0 1 2 3 4 5 6 7 8 9 --sweep --rounds --lambdas --noise --ablations
                                                    # everything RESULTS.md reports (hours: see its wall times)
    python scripts/reproduce.py --report-only       # RESULTS.md and figures/ from the records in results/, no run
    python scripts/reproduce.py --tiny              # the same runs on the tiny preset (a smoke test)

Runs, all under --runs (default runs/reproduce), each `train.py --seed S` plus flags:
  seed{S}              the whole pipeline with --controls                          the main table
                       (--rounds adds --rlp-rounds 3 --method spg to seeds 0-4)      iterated RLP
  kl_{B}.seed{S}       Steps 3-5 with --kl-coef B, SPG and the controls only         the pressure sweep
  lambda_{L}.seed{S}   the RLP-UML RM with --uml-lambda L (no PPO on it)             UML's mechanism
  noise.seed{S}        every stage after the data again, with --micro-batch 16      float-level noise
  {ablation}.seed{S}   the paper's Tables 4 and 5 and the sensitivity sweeps
A variant starts as a copy of its seed's finished stages that its flags do not change. A run is
skipped when its record says it is complete with the same commands; otherwise train.py runs it,
itself skipping complete stages and resuming a killed PPO stage, so a killed reproduction goes on
where it stopped. --workers 2 (the default) runs two runs at once with one thread each, which keeps
two cores busy without the slowdown of two processes with two threads each.

Each finished run leaves a compact record in results/runs/<run>.json.gz (its settings, stage
times, eval/results.json and every stage's metrics, without weights or texts): commit them, and
`--report-only` rebuilds RESULTS.md on any machine (scripts/report.py).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # the repository's modules, and scripts/report.py

import train  # noqa: E402
from report import fmt_number  # noqa: E402  (scripts/report.py)

STAGE_DIRS = [s.folder for s in train.STAGES]
BEFORE_PPO = STAGE_DIRS[:STAGE_DIRS.index("ppo")]  # what Steps 3-5 start from: data, SFT, preferences, Step-2 RM
# every stage before Step 4's re-learned RMs: a variant of Step 4 starts from copies of these
BEFORE_STEP4 = STAGE_DIRS[:next(i for i, s in enumerate(train.STAGES) if s.rm and s.step.startswith("4"))]
RECORDS = ROOT / "results" / "runs"

KL_COEFS = [0.0067, 0.05, 0.1]  # the pressure sweep, beside the default 0.02 (the main runs)
LAMBDAS = [0.1, 1]              # the UML weight, beside the default 0.5 (main runs) and 0 (their control)
MICRO_BATCH = 16                # the float-noise re-runs: the same training, another summation order
# Stages a variant may re-make when its seed's main run folder is not on this machine (only its record
# is): the data are drawn from the seed with integer arithmetic, so re-making them repeats them exactly.
REMADE = STAGE_DIRS[:1]
# A noise re-run starts from the data alone (no float sum) and re-learns SFT too: re-running only
# Steps 3-5 with another summation order left PPO unchanged to the 5th digit on two of three seeds
# (no sampled token flipped), while SFT's 800 steps amplify the same perturbation into another SFT
# model, as another kind of CPU does.
NOISE_COPY = REMADE
ROUNDS = 3                      # iterated RLP-SPG

# name: (group, stages copied from the seed's main run, train.py flags)
ABLATIONS = {
    "uml_mvi": (BEFORE_STEP4, ["--method", "uml", "--uml-loss", "mvi"]),
    "uml_infomax": (BEFORE_STEP4, ["--method", "uml", "--uml-loss", "infomax"]),
    "uml_contrastive": (BEFORE_STEP4, ["--method", "uml", "--uml-loss", "contrastive"]),
    "spg_select_all": (BEFORE_STEP4, ["--method", "spg", "--spg-gamma", "0"]),
    "spg_reward": (BEFORE_STEP4, ["--method", "spg", "--synthetic-labels", "reward"]),
    "spg_rlaif": (BEFORE_STEP4, ["--method", "spg", "--synthetic-labels", "rlaif"]),
    "gamma_0.3": (BEFORE_STEP4, ["--method", "spg", "--spg-gamma", "0.3"]),
    "gamma_0.7": (BEFORE_STEP4, ["--method", "spg", "--spg-gamma", "0.7"]),
    "n_4": (BEFORE_STEP4[:-1], ["--rlp-n", "4"]),
}


@dataclass
class Job:
    """One run folder and the train.py commands that complete it (run in order)."""
    name: str
    group: str
    seed: int
    commands: list[list[str]]
    copy: list[str] = field(default_factory=list)  # stages copied from seed{seed} first
    after: tuple[str, str] = ("", "")              # (group, name) of a job that must be complete first


def jobs(args) -> list[Job]:
    """Every run the options ask for, in an order that starts the main seeds first."""
    common = ["--preset", "tiny"] if args.tiny else []
    main = lambda s: ("main", f"seed{s}")  # noqa: E731
    out = [Job(f"seed{s}", "main", s, [[*common, "--controls"]]) for s in args.seeds]
    first5 = args.seeds[:5]
    if args.sweep:
        out += [Job(f"kl_{fmt_number(b)}.seed{s}", "sweep", s, [[*common, "--kl-coef", fmt_number(b), "--method", "spg", "--controls"]],
                    copy=BEFORE_PPO, after=main(s)) for s in first5 for b in args.kl_coefs]
    if args.rounds:  # the same folders as the main runs: their later rounds
        out += [Job(f"seed{s}", "rounds", s, [[*common, "--controls", "--rlp-rounds", str(ROUNDS), "--method", "spg"]],
                    after=main(s)) for s in first5]
    if args.lambdas:
        out += [Job(f"lambda_{fmt_number(lam)}.seed{s}", "lambda", s,
                    [[*common, "--uml-lambda", fmt_number(lam), "--method", "uml", "--stage", "rlp_reward"],
                     [*common, "--uml-lambda", fmt_number(lam), "--method", "uml", "--stage", "eval"]],
                    copy=BEFORE_STEP4, after=main(s)) for s in first5 for lam in args.lambda_values]
    if args.noise:
        out += [Job(f"noise.seed{s}", "noise", s, [[*common, "--controls", "--micro-batch", str(MICRO_BATCH)]],
                    copy=NOISE_COPY, after=main(s)) for s in first5]
    if args.ablations:
        out += [Job(f"{name}.seed{s}", "ablation", s, [[*common, *flags]], copy=stages, after=main(s))
                for name, (stages, flags) in ABLATIONS.items() for s in args.seeds[:args.ablation_seeds]]
    return out


# ----------------------------------------------------------------------------- running

def record_path(name: str) -> Path:
    return RECORDS / f"{name}.json.gz"


def read_record(name: str) -> dict | None:
    path = record_path(name)
    return json.loads(gzip.decompress(path.read_bytes())) if path.is_file() else None


def write_record(out: Path, job: Job, commands: list[list[str]]) -> None:
    """The compact record of a finished run: settings, stage times, results and metrics; every
    metrics row kept, the rollout texts left out."""
    def rows(path: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "samples"}
                for line in path.read_text().splitlines() if line.strip()]
    import report
    record = {"name": out.name, "seed": job.seed, "commands": commands, "copied": job.copy, "machine": report.hardware(),
              "config": json.loads((out / "config.json").read_text()),
              "timings": rows(out / "timings.jsonl"),
              "results": json.loads((out / "eval" / "results.json").read_text()),
              "metrics": {d.name: rows(d / "metrics.jsonl") for d in sorted(out.iterdir())
                          if (d / "DONE").is_file() and (d / "metrics.jsonl").is_file()}}
    RECORDS.mkdir(parents=True, exist_ok=True)
    tmp = record_path(out.name).with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(json.dumps(record, separators=(",", ":")).encode(), mtime=0))
    os.replace(tmp, record_path(out.name))


def done_commands(name: str) -> list[list[str]]:
    record = read_record(name)
    return record["commands"] if record else []


def recorded(job: Job) -> bool:
    """The job's record says every one of its commands is complete."""
    done = done_commands(job.name)
    return all(cmd in done for cmd in job.commands)


def start_from(job: Job, runs: Path) -> None:
    """A new variant's folder: the finished stages it shares with its seed's main run, copied. A stage
    in REMADE that is not there (the main run was made on another machine; only its record is here)
    is left for train.py to make again; any other missing stage is an error, before anything is written."""
    out = runs / job.name
    if not job.copy or out.exists():
        return
    base, tmp = runs / f"seed{job.seed}", out.with_name(out.name + ".copying")
    present = [s for s in job.copy if (base / s / "DONE").is_file()]
    missing = [s for s in job.copy if s not in present and s not in REMADE]
    if missing:
        raise SystemExit(f"error: {job.name} starts from stage(s) {', '.join(missing)} of {base}, which are not "
                         f"there: run seed {job.seed}'s main run in {runs} first (delete results/runs/"
                         f"seed{job.seed}.json.gz to make this script run it)")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for stage in present:
        shutil.copytree(base / stage, tmp / stage)
    os.replace(tmp, out)


def run(job: Job, runs: Path, threads: int, log) -> float:
    """Complete one run folder: copy its starting stages, run its commands (train.py skips what is
    complete), then write its record. Returns the seconds it took (0: its record says it is done)."""
    if recorded(job):
        return 0.0
    done = done_commands(job.name)
    out = runs / job.name
    t0 = time.time()
    start_from(job, runs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for cmd in job.commands:
        full = [sys.executable, str(ROOT / "train.py"), "--quiet", "--seed", str(job.seed), "--out", str(out), *cmd]
        proc = subprocess.run(full, capture_output=True, text=True, cwd=ROOT, env=env)
        with open(runs / f"{job.name}.log", "a") as f:
            f.write(f"$ {' '.join(full)}\n{proc.stdout}{proc.stderr}\n")
        if proc.returncode != 0:
            raise SystemExit(f"error: {' '.join(full)} failed:\n{proc.stderr[-3000:]}")
    write_record(out, job, done + [cmd for cmd in job.commands if cmd not in done])
    seconds = time.time() - t0
    log(f"  {job.name} ({job.group}): {seconds / 60:.1f} min")
    return seconds


def finished(job: Job, runs: Path) -> bool:
    """Every stage the job's commands ask for is complete in its run folder (made by this script or
    by hand with the same commands)."""
    import config
    out = runs / job.name
    for cmd in job.commands:
        cfg = config.parse_args(["--out", str(out), "--seed", str(job.seed), *cmd], "", train.flags())
        if not all((out / s.folder / "DONE").is_file() for s in train.plan(cfg)):
            return False
    return True


def collect(todo: list[Job], runs: Path, log) -> None:
    """Records of the runs that are complete, without running anything (runs made elsewhere)."""
    for job in todo:
        if not recorded(job) and finished(job, runs):
            done = done_commands(job.name)
            write_record(runs / job.name, job, done + [cmd for cmd in job.commands if cmd not in done])
            log(f"  recorded {job.name} ({job.group})")


def run_all(todo: list[Job], runs: Path, workers: int, log) -> None:
    """Run the jobs, `workers` at a time (never two on one folder), each once the job it needs is
    complete, with a progress bar and an estimate of the time left (from the minutes the finished
    jobs of each kind took)."""
    from tqdm import tqdm
    # a run whose record says it is complete costs nothing: leaving it out keeps the bar's minutes and
    # time-left estimate to the work still to do (a job waiting on it then starts at once)
    todo = [j for j in todo if not recorded(j)]
    guess = {"main": 20.0, "sweep": 12.0, "rounds": 10.0, "lambda": 4.0, "noise": 22.0, "ablation": 5.0}  # minutes
    pending, finished, running = list(todo), set(), {}
    wanted = {(j.group, j.name) for j in todo}
    spent: dict[str, list[float]] = {}
    bar = tqdm(total=sum(guess[j.group] for j in todo), desc="reproduce",
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} min of work [{elapsed}<{remaining}]")
    threads = 1 if workers > 1 else (os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        while pending or running:
            for job in list(pending):
                busy = {j.name for j in running.values()}
                ready = job.after in finished or job.after not in wanted
                if ready and job.name not in busy and len(running) < workers:
                    pending.remove(job)
                    running[pool.submit(run, job, runs, threads, log)] = job
            if not running:
                raise SystemExit("error: jobs wait for each other: " + ", ".join(j.name for j in pending))
            for fut in [f for f in running if f.done()]:
                job = running.pop(fut)
                minutes = fut.result() / 60
                if minutes:
                    spent.setdefault(job.group, []).append(minutes)
                    guess[job.group] = sum(spent[job.group]) / len(spent[job.group])
                finished.add((job.group, job.name))
                bar.total = sum(guess[j.group] for j in todo)
                bar.update(guess[job.group])
            time.sleep(0.5)
    bar.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of the main table "
                   "(default 0 1 2 3 4; the sweeps use the first five)")
    p.add_argument("--sweep", action="store_true", help=f"the pressure sweep: --kl-coef {KL_COEFS} on five seeds")
    p.add_argument("--kl-coefs", type=float, nargs="+", default=KL_COEFS, help=f"the sweep's KL coefficients "
                   f"beside the default 0.02 (default {' '.join(map(str, KL_COEFS))})")
    p.add_argument("--rounds", action="store_true", help=f"iterated RLP-SPG, {ROUNDS} rounds, on five seeds")
    p.add_argument("--lambdas", action="store_true", help=f"the UML RM with lambda {LAMBDAS} on five seeds")
    p.add_argument("--lambda-values", type=float, nargs="+", default=LAMBDAS, help="the lambdas of --lambdas "
                   f"beside 0.5 and 0 (default {' '.join(map(str, LAMBDAS))})")
    p.add_argument("--noise", action="store_true", help=f"five seeds again from the data on, with --micro-batch {MICRO_BATCH}")
    p.add_argument("--ablations", action="store_true", help="the paper's Tables 4 and 5 and the sensitivity sweeps")
    p.add_argument("--ablation-seeds", type=int, default=1, help="seeds of --ablations (default 1)")
    p.add_argument("--workers", type=int, default=2, help="runs at once, one thread each (default 2: a 2-core CPU)")
    p.add_argument("--runs", default="runs/reproduce", help="folder of the runs (default runs/reproduce)")
    p.add_argument("--results", default="RESULTS.md", help="report to write (default RESULTS.md)")
    p.add_argument("--figures", default="figures", help="folder of the PNG figures (default figures)")
    p.add_argument("--report-only", action="store_true", help="write the report from results/runs/ only")
    p.add_argument("--collect", action="store_true", help="record the runs already complete in --runs, run "
                   "nothing, and report on what is recorded")
    p.add_argument("--tiny", action="store_true", help="the tiny preset: checks the script, not the paper")
    args = p.parse_args(argv)
    global RECORDS
    if args.tiny:  # a smoke test keeps its records beside its runs, not in the repository's results/
        RECORDS = Path(args.runs) / "records"
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    todo = jobs(args)
    if args.collect:
        collect(todo, Path(args.runs), log)
        todo = [j for j in todo if recorded(j)]
    elif not args.report_only:
        runs = Path(args.runs)
        runs.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        run_all(todo, runs, args.workers, log)
        log(f"all runs complete in {(time.time() - t0) / 60:.1f} min")
    import report
    command = "python scripts/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    programme = jobs(argparse.Namespace(**{**vars(args), "seeds": list(range(10)), "sweep": True, "rounds": True,
                                           "lambdas": True, "noise": True, "ablations": False,
                                           "kl_coefs": KL_COEFS, "lambda_values": LAMBDAS}))
    lacking = [f"{j.group}.{j.name}" if j.name.startswith("seed") else j.name for j in programme
               if not recorded(j)]
    report.write(RECORDS, sorted({j.name for j in todo}), args, command.strip(), Path(args.results),
                 Path(args.figures), [] if args.tiny else lacking)
    log(f"wrote {args.results} and {args.figures}/")


if __name__ == "__main__":
    main()
