"""The repository's layout keeps its promises: no import circle, no list of stages outside
train.STAGES, every file a comment or document cites exists, the PPO checklist names functions
and tests that exist, and the reading routes of one PPO iteration and of Step 4 stay short."""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["plumbing", "extras", "scripts"]


def project_files(with_tests: bool = False) -> list[Path]:
    files = sorted(ROOT.glob("*.py")) + [p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))]
    if with_tests:
        files += sorted((ROOT / "tests").rglob("*.py"))
    return files


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def test_no_import_circle():
    files = project_files()
    known = {module_name(p) for p in files}
    graph = {module_name(p): imported_modules(p, known) - {module_name(p)} for p in files}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert graph["lm"] == set()  # the tensor module needs nothing of ours
    # plumbing is below the method, the extras and the scripts: it may use lm.py's tensors and config.py's settings
    above = {m for m in known if not m.startswith("plumbing")} - {"lm", "config"}
    below = [f"{p.name} imports {m}" for p in ROOT.glob("plumbing/*.py") for m in imported_modules(p, known) if m in above]
    assert not below, below


def test_the_import_check_finds_a_circle(tmp_path):
    """The graph walk above can fail: two modules that import each other are reported."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    assert imported_modules(tmp_path / "a.py", {"a", "b"}) == {"b"}
    assert imported_modules(tmp_path / "b.py", {"a", "b"}) == {"a"}


def stage_names() -> set[str]:
    import train
    return ({s.folder for s in train.STAGES} | {s.policy for s in train.STAGES if s.policy} |
            {s.rm for s in train.STAGES if s.rm} | {"Best-of-n"})


def literal_lists(path: Path):
    """(line, strings) of every list, tuple or set literal of two or more strings in a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            strings = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(strings) >= 2:
                yield node.lineno, strings


def test_no_stage_list_outside_the_registry():
    """A fork that adds a stage edits train.STAGES only: no other file lists three or more stages
    or policies (a pair is a comparison, not a list)."""
    names = stage_names()
    offenders = []
    for path in project_files(with_tests=True):
        if path.name in ("train.py", "test_layout.py"):
            continue
        for line, strings in literal_lists(path):
            if len([s for s in strings if s in names]) >= 3:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {strings}")
    assert not offenders, "\n".join(offenders)


# files that runs write (eval/results.md, eval/hacks.md) or tests make in temporary folders
RUN_OUTPUTS = {"results.md", "hacks.md", "killer.py", "exit_worker.py"}


def cited_files(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w/.\-\"'])((?:[\w.-]+/)*[\w-]+\.(?:md|py))\b", text))  # not "x.py" in code


def test_every_cited_file_exists():
    """No comment, docstring, help text, requirements file or document points at a file the
    repository lacks: a path from the root or from the citing file's folder; a bare name in the
    citing file's folder or at the root (a bare `models.py` in a root module would be a stale
    pointer to what is now plumbing/models.py)."""
    docs = sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md"))
    others = sorted(ROOT.glob("requirements*.txt")) + [ROOT / ".ci" / "run"]
    missing = []
    for path in project_files(with_tests=True) + docs + others:
        for cited in cited_files(path.read_text()):
            if Path(cited).name in RUN_OUTPUTS or cited.endswith("/__init__.py") or path.name == "test_layout.py":
                continue
            if not any((base / cited).is_file() for base in (ROOT, path.parent)):
                missing.append(f"{path.relative_to(ROOT)}: {cited}")
    assert not missing, "\n".join(missing)


def test_documents_have_no_placeholders():
    """No document still holds a placeholder (an all-capitals word with an underscore, like
    TEST_TIME) where a measured number belongs."""
    for path in sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md")):
        text = re.sub(r"`[^`]*`", "", path.read_text())  # code: flags and names, not placeholders
        found = re.findall(r"\b[A-Z]{2,}_[A-Z]{2,}\w*\b", text)  # (L_M, D_SKL: the paper's notation)
        assert not found, (path.name, found)


def test_the_citation_check_sees_paths():
    assert cited_files("see docs/ppo_checklist.md and (ppo.py), not NOTES.md 13") == \
        {"docs/ppo_checklist.md", "ppo.py", "NOTES.md"}


def test_the_ppo_checklist_names_what_exists():
    text = (ROOT / "docs" / "ppo_checklist.md").read_text()
    items = re.findall(r"^\d+\. \*\*", text, flags=re.M)
    assert len(items) == 17
    tests = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    functions = re.findall(r"`((?:plumbing\.)?[a-z_]+\.[A-Za-z_]+)`", text)
    assert len(tests) >= 17 and len(functions) >= 17
    for file, name in tests:
        assert re.search(rf"^def {name}\(", (ROOT / file).read_text(), flags=re.M), f"{file}::{name}"
    for dotted in functions:
        module, _, attr = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), dotted


# ----------------------------------------------------------------------------- reading routes

# what a reader follows through one PPO iteration (rollout, KL-shaped reward, GAE, clipped losses)
PPO_ROUTE = {"ppo.py": ["train_ppo", "Loop", "start_loop", "rollout", "reward_scores", "kl_penalized_rewards",
                        "masked_whiten", "global_masked_mean", "masked_mean", "gae", "update", "policy_loss",
                        "value_loss", "token_mean", "KLController"],
             "lm.py": ["sample", "_decode", "all_rows_done", "left_pad", "join", "response_mask", "response_logits",
                       "token_logprobs", "sequence_scores", "head_score", "score_head", "_last_token_hidden", "token_values",
                       "backbone", "as_one_forward", "autocast"]}
# what a reader follows through Step 4 (both variants, and the recipe around them)
STEP4_ROUTE = {"rlp.py": ["build_policy_samples", "new_rm", "uml_loss_fn", "relearn_uml", "synthetic_preferences",
                          "score_all", "relearn_spg", "clusterer", "folder", "policy_before", "stage_samples",
                          "stage_uml", "stage_spg", "label_accuracy", "stage_ppo"],
               "ib_loss.py": ["symmetric_kl", "jsd_mutual_information", "partner_rows", "beta_schedule", "mlp",
                              "MIBHeads"],
               "spg.py": ["cluster_by_key", "confidence", "largest_cluster", "preference_pair", "synthesize"],
               "reward.py": ["bradley_terry_loss", "pair_rewards", "normalize_scores", "num_steps",
                             "accumulate_gradients", "train_reward_model", "split_pairs", "human_pairs", "to_pairs",
                             "sft_sample_texts", "normalize_on_sft_samples", "train_kwargs"]}


def route_lines(route: dict) -> dict[str, int]:
    """Lines per file of the definitions on a route (decorators and docstrings included)."""
    out = {}
    for file, names in route.items():
        tree = ast.parse((ROOT / file).read_text())
        if names is None:
            out[file] = len((ROOT / file).read_text().splitlines())
            continue
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        missing = set(names) - set(defs)
        assert not missing, (file, missing)
        out[file] = sum(defs[n].end_lineno - min([defs[n].lineno] + [d.lineno for d in defs[n].decorator_list]) + 1
                        for n in names)
    return out


@pytest.mark.parametrize("route, limit, files", [(PPO_ROUTE, 400, 3), (STEP4_ROUTE, 600, 4)])
def test_reading_routes_stay_short(route, limit, files):
    lines = route_lines(route)
    assert len(lines) <= files and sum(lines.values()) <= limit, lines


def test_readme_is_short_and_its_numbers_are_measured():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for file, lines in re.findall(r"^\| \[([\w/]+\.py)\]\([\w/]+\.py\) \|[^|]+\| (\d+) \|", readme, flags=re.M):
        actual = len((ROOT / file).read_text().splitlines())
        assert abs(actual - int(lines)) <= max(10, actual // 10), (file, lines, actual)
    for route in (PPO_ROUTE, STEP4_ROUTE):
        total = sum(route_lines(route).values())
        said = re.search(rf"{total // 10}\d\s+lines\s+in\s+{len(route)}\s+files", readme)
        assert said, (total, len(route))
