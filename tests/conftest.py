"""Make the repository's modules (`import ppo`, `from plumbing import dist`, ...) and the tests'
helpers (tests/helpers: tiny models, workers, pipeline runners) importable from every test folder."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests" / "helpers"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
