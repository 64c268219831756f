# Sourced by tools/demo.sh and tools/test.sh: create or reuse the virtual environment.
#
# Location: $ASCEND_ADAPT_VENV if set, else .venv in the repository. The environment is reused
# when its stamp (a hash of pyproject.toml + setup.py) matches; the project itself is always
# re-installed in editable mode (a few seconds) so the venv points at this checkout.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ASCEND_ADAPT_VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)'; then
  echo "error: $PY is $("$PY" --version 2>&1); ascend-adapt needs Python 3.10-3.12 (3.11 recommended; MindSpore 2.10 wheels)" >&2
  exit 2
fi
stamp="$(cat "$REPO/pyproject.toml" "$REPO/setup.py" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.ascend-adapt-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "== installing dependencies into $VENV (first run: about 1-3 minutes; MindSpore is ~800 MB)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned to 2.13.0: pip takes the CPU build from the machine's local wheels.
  "$VENV/bin/python" -m pip install -q -e "$REPO[test]"
  echo "$stamp" > "$VENV/.ascend-adapt-stamp"
else
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$REPO" >/dev/null 2>&1 \
    || "$VENV/bin/python" -m pip install -q --no-deps -e "$REPO"
fi
export PATH="$VENV/bin:$PATH"
cd "$REPO"
