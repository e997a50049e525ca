"""Make the repository's modules (`import ppo`, `from plumbing import dist`, ...) and the tests'
helpers (tests/helpers: tiny models, workers, pipeline runners) importable from every test folder."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests" / "helpers"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


import pytest  # noqa: E402

CHECKPOINTS = "checkpoints"  # the marker of tests that load a real pretrained checkpoint (minutes on a CPU)


def pytest_configure(config):
    config.addinivalue_line("markers", f"{CHECKPOINTS}: loads a real pretrained checkpoint (SmolLM2-135M, Gemma-3-270M; "
                            "about 3 minutes on a 2-core CPU); skipped unless asked for with -m checkpoints")


def pytest_collection_modifyitems(config, items):
    """`python -m pytest` skips the real-checkpoint tests (they alone would take a third of the suite's
    time); `python -m pytest -m checkpoints` runs them (CI does both)."""
    if CHECKPOINTS in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="loads a real checkpoint: run with -m checkpoints")
    for item in items:
        if CHECKPOINTS in item.keywords:
            item.add_marker(skip)
