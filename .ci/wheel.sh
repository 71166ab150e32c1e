#!/usr/bin/env bash
# Packaging check: build the sdist and, from it, the wheel; install the wheel (not editable) into a
# fresh venv that takes the pinned dependencies from .venv; from a folder outside the checkout,
# import every module of the installed package and compare them (and the data files) with the
# source tree's, run `seqmux --help`, and dry-run the default workflow from a copy of the checkout
# without seqmux/, so that nothing can come from the source tree.
#   bash .ci/wheel.sh [CHECKOUT]     (default: this repository; uses CHECKOUT/.venv or $VENV)
set -euo pipefail
checkout=$(cd "${1:-$(dirname "$0")/..}" && pwd)
venv=$(cd "${VENV:-$checkout/.venv}" && pwd)
started=$(date +%s)
tmp=$(mktemp -d /tmp/seqmux-wheel.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
unset PYTHONPATH

# a clean copy of the checkout (git's view: tracked and untracked files, not the ignored ones such as
# the seqmux.egg-info/ of an editable install, whose file list would hide a package left out)
mkdir "$tmp/checkout" "$tmp/work"
(cd "$checkout" && git ls-files -z --cached --others --exclude-standard \
  | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' | tar --null -T - -cf -) | tar -xf - -C "$tmp/checkout"

# the sdist first, then the wheel built from the unpacked sdist (a file left out of the sdist fails)
"$venv/bin/python" -m build --no-isolation --outdir "$tmp/dist" "$tmp/checkout" >"$tmp/build.log" 2>&1 \
  || { cat "$tmp/build.log" >&2; echo "ERROR: building the sdist and wheel failed" >&2; exit 1; }
wheel=$(ls "$tmp"/dist/seqmux-*.whl)
echo "built $(cd "$tmp/dist" && ls | tr '\n' ' ')"

# the dry run below must find seqmux only in the install
rm -rf "$tmp/checkout/seqmux" "$tmp/checkout"/*.egg-info

# a fresh venv holding only the wheel; the dependencies come from .venv's site-packages through a
# path line (.pth), which adds that folder and nothing else (the editable install's hook in .venv
# is not run)
"$venv/bin/python" -m venv --without-pip "$tmp/venv"
deps=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site=$("$tmp/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" >"$site/seqmux-ci-dependencies.pth"
"$venv/bin/python" -m pip --python "$tmp/venv/bin/python" install --quiet --no-deps --no-index "$wheel"

cd "$tmp/work"
"$tmp/venv/bin/python" - "$checkout/seqmux" "$site" <<'EOF'
import importlib
import pkgutil
import sys
from pathlib import Path

source, site = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
import seqmux  # noqa: E402

installed = Path(seqmux.__file__).resolve().parent
if not installed.is_relative_to(site):
    sys.exit(f"ERROR: seqmux imported from {installed}, not from the installed wheel in {site}")
failed = []
modules = {"seqmux"}
for info in pkgutil.walk_packages(seqmux.__path__, "seqmux.", onerror=lambda name: failed.append(name)):
    modules.add(info.name)
for name in sorted(modules):
    try:
        importlib.import_module(name)
    except Exception as exc:  # every failure, not only the first
        failed.append(f"{name} ({type(exc).__name__}: {exc})")
expected = set()
for path in source.rglob("*.py"):
    parts = path.relative_to(source.parent).with_suffix("").parts
    expected.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
data = {p.relative_to(source) for p in source.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
missing = sorted(expected - modules) + sorted(str(p) for p in data if not (installed / p).is_file())
if failed or missing:
    sys.exit("ERROR: the installed wheel " + "; ".join(
        ([f"cannot import: {', '.join(failed)}"] if failed else [])
        + ([f"lacks (in the source tree): {', '.join(missing)}"] if missing else [])))
print(f"wheel: imported all {len(modules)} modules from {installed}; {len(data)} data files present")
EOF

"$tmp/venv/bin/seqmux" --help >/dev/null || { echo "ERROR: the installed 'seqmux --help' failed" >&2; exit 1; }
"$tmp/venv/bin/python" -m snakemake -s "$tmp/checkout/Snakefile" --directory "$tmp/work" -n --cores 1 \
  >"$tmp/dry_run.log" 2>&1 \
  || { cat "$tmp/dry_run.log" >&2; echo "ERROR: snakemake -n of the default config failed against the wheel" >&2; exit 1; }
grep -q "^total" "$tmp/dry_run.log" \
  || { cat "$tmp/dry_run.log" >&2; echo "ERROR: snakemake -n planned no job" >&2; exit 1; }
echo "wheel: seqmux --help and snakemake -n ($(grep -m1 "^total" "$tmp/dry_run.log" | awk '{print $2}') jobs) ran" \
  "against the install; the check took $(( $(date +%s) - started )) s"
