#!/usr/bin/env bash
# One command for the tests: install what they need (incl. Chromium for the web-page test),
# then lint, type-check and run the whole suite (the slow training and browser tests included:
# what CI runs). A developer's fast check: .venv/bin/python -m pytest -m "not slow" -n 2
#   bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

SIMSEARCH_WITH_BROWSER=1 SIMSEARCH_EXTRAS=test bash scripts/install.sh
source .venv/bin/activate

echo "== ruff"
ruff check simsearch tests scripts
ruff format --check simsearch tests scripts
echo "== mypy"
mypy
echo "== pytest"
python -m pytest "$@"
