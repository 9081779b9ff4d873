#!/usr/bin/env bash
# Wall time of one N-item shard of scripts/wan22_t2v.rhai on the built-in tiny
# models, stage-major (each model loaded once) against item by item (a fresh
# session per item, as `baton run`), and a check that both give the same latents.
#
#   scripts/bench_batch.sh                      # 6 items, 32x32, 1 frame, 4 steps
#   N=6 scripts/bench_batch.sh --set width=160 --set height=160 --set frames=9 --set steps=8
#
# Extra arguments go to both `baton batch` runs (they replace the small defaults).
set -euo pipefail
cd "$(dirname "$0")/.."
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
N=${N:-6}
if [ $# -eq 0 ]; then
    set -- --set width=32 --set height=32 --set frames=1 --set steps=4
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 0 $((N - 1))); do
    echo "{\"id\":\"v$i\",\"seed\":$((i + 1)),\"prompt\":\"a red fox in the snow, take $i\"}"
done >"$work/jobs.jsonl"
# Warm the built-in model cache so neither side pays for generating it.
"$BATON" run scripts/wan22_t2v.rhai --out "$work/warm" "$@" >/dev/null 2>&1
echo "baton batch, one shard of $N items, $(nproc) CPUs, args: $*"
for mode in stage-major item-major; do
    flag=()
    [ "$mode" = item-major ] && flag=(--item-major)
    start=$(date +%s.%N)
    "$BATON" batch scripts/wan22_t2v.rhai --jobs "$work/jobs.jsonl" --out "$work/$mode" \
        --device cpu "${flag[@]}" "$@" >/dev/null 2>"$work/$mode.log"
    end=$(date +%s.%N)
    loads=$(grep -c ' MiB resident,' "$work/$mode.log" || true)
    printf '%-12s %6.2f s wall  %3d model loads  (%s)\n' "$mode" \
        "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$loads" "$(grep '^shard ' "$work/$mode.log")"
done
for i in $(seq 0 $((N - 1))); do
    cmp -s "$work/stage-major/v$i/wan22_t2v_latent.safetensors" \
        "$work/item-major/v$i/wan22_t2v_latent.safetensors" ||
        { echo "v$i: latents differ"; exit 1; }
done
echo "latents: bit-identical for all $N items"
