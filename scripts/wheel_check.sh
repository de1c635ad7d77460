#!/usr/bin/env bash
# Install the built wheel into a fresh venv from pyproject's ranges, held only by the constraints file
# given (constraints-torch.txt: torch at the machine's CPU build, everything else resolved from the
# ranges; constraints-lowest.txt: every claimed lower bound), then run a CLI smoke test and the test
# suite against the installed package rather than the checkout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
constraints="$root/${1:?usage: scripts/wheel_check.sh CONSTRAINTS_FILE}"
work="$(mktemp -d -t sift-wheel-XXXXXX)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$root"
"$py" -m pip install -q -c "$constraints" "$(ls "$work"/dist/sift_cli-*.whl)[dev]"
"$py" -m pip check
echo "wheel check ($(basename "$constraints")): installed in $((SECONDS - started)) s"

cd "$work"
"$py" -c "import sift_cli, pathlib; assert 'site-packages' in pathlib.Path(sift_cli.__file__).parts, sift_cli.__file__"
"$work/venv/bin/sift" --help >/dev/null
"$work/venv/bin/sift" env >/dev/null
# The multi-process tests exercise torch and accelerate, not the packaging: `make test` runs them once.
OMP_NUM_THREADS=1 "$py" -m pytest -q -p no:cacheprovider -m "not slow and not distributed" "$root/tests"
echo "wheel check ($(basename "$constraints")): passed in $((SECONDS - started)) s"
