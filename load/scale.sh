#!/usr/bin/env bash
# Purchase load that shows the persist-purchase consumer scaling from zero and back.
# Thin wrapper: the work is done by `python -m load.scale` (load/loadgen.py, load/sampler.py)
# in the project's virtualenv, from the repository root. `load/scale.sh --help` lists every flag; `make load` runs the defaults.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
cd "$root"
exec "$py" -m load.scale "$@"
