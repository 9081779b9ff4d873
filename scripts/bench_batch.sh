#!/usr/bin/env bash
# Wall time of one N-item shard of scripts/wan22_t2v.rhai on the built-in tiny
# models, stage-major (each model loaded once) against item by item (a fresh
# session per item, as `baton run`), and a check that both give the same latents.
#
#   scripts/bench_batch.sh                      # 6 items, 32x32, 1 frame, 4 steps
#   REPEATS=3 scripts/bench_batch.sh            # interleaved repeats, each figure printed
#   scripts/bench_batch.sh --set steps=8        # the recipe's own size (160x160, 9 frames)
#
# Extra arguments go to both `baton batch` runs (they replace the small defaults).
# Wall times depend on what else the machine runs: compare figures of one call.
set -euo pipefail
cd "$(dirname "$0")/.."
BATON=${BATON:-${CARGO_TARGET_DIR:-target}/release/baton}
N=${N:-6}
REPEATS=${REPEATS:-1}
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
echo "baton batch, one shard of $N items, $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg), args: $*"
for r in $(seq 1 "$REPEATS"); do
    modes=(stage-major item-major)
    # Alternate which side goes first.
    [ $((r % 2)) -eq 0 ] && modes=(item-major stage-major)
    for mode in "${modes[@]}"; do
        flag=()
        [ "$mode" = item-major ] && flag=(--item-major)
        rm -rf "$work/$mode"
        start=$(date +%s.%N)
        "$BATON" batch scripts/wan22_t2v.rhai --jobs "$work/jobs.jsonl" --out "$work/$mode" \
            --device cpu "${flag[@]}" "$@" >/dev/null 2>"$work/$mode.log"
        end=$(date +%s.%N)
        loads=$(grep -c ' MiB resident,' "$work/$mode.log" || true)
        printf 'run %d  %-12s %7.2f s wall  %3d model loads\n' "$r" "$mode" \
            "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$loads"
    done
    for i in $(seq 0 $((N - 1))); do
        cmp -s "$work/stage-major/v$i/wan22_t2v_latent.safetensors" \
            "$work/item-major/v$i/wan22_t2v_latent.safetensors" ||
            { echo "v$i: latents differ"; exit 1; }
    done
done
echo "latents: bit-identical for all $N items"
