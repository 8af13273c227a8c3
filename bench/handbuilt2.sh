#!/usr/bin/env bash
# The hand-built 2-way word count: a strong 2-core pipeline written by hand.
#
#   bash bench/handbuilt2.sh CORPUS_DIR OUT_FILE [MAP [REDUCE]]
#
# 1. Two maps in parallel, over alternate input files: cat | MAP | sort.
# 2. One boundary key: the first whole line past the byte middle of the
#    first sorted map output (both halves draw from the same distribution).
# 3. Each sorted map output is cut at the boundary: awk finds the byte offset
#    of the first line at or after "BOUNDARY<TAB>", reading only up to it.
# 4. Two merges in parallel, one per key range: sort -m of the two pieces
#    (head -c / tail -c of the sorted files, no copies) | REDUCE.
# 5. The two reduce outputs, in key order, joined into OUT_FILE.
#
# A line "K<TAB>..." sorts before "B<TAB>" exactly when K < B, for keys
# without bytes at or below the tab (words never have them), so every line
# of a key lands in one range, and the output equals the sequential pipeline's.
set -euo pipefail
export LC_ALL=C

usage="usage: handbuilt2.sh CORPUS_DIR OUT_FILE [MAP [REDUCE]]"
here=$(cd "$(dirname "$0")/.." && pwd)
corpus=${1:?$usage}
out=${2:?$usage}
map=${3:-$here/exec/word_count/map.py}
reduce=${4:-$here/exec/word_count/reduce.py}

scratch=$(mktemp -d "$out.handbuilt.XXXXXX")
trap 'running=$(jobs -p); [ -z "$running" ] || kill $running 2>/dev/null || true; rm -rf "$scratch"' EXIT

map_sorted() {  # OUT FILE...: the files' map output, sorted (empty for no files)
    local target=$1
    shift
    if [ "$#" -eq 0 ]; then : > "$target"; return; fi
    cat -- "$@" | "$map" | sort --parallel=1 -T "$scratch" > "$target"
}

middle_key() {  # SORTED_FILE: the key of the first whole line past its byte middle
    local size
    size=$(stat -c %s "$1")
    # sed quits early, so tail and head may die of SIGPIPE: not a failure here.
    (set +o pipefail; tail -c +$((size / 2 + 1)) "$1" | head -c 65536 | sed -n '2{s/\t.*//;p;q}')
}

cut_offset() {  # SORTED_FILE BOUNDARY: the number of bytes before the first line >= BOUNDARY<TAB>
    B="$2"$'\t' awk '$0 >= ENVIRON["B"] { exit } { n += length($0) + 1 } END { print n + 0 }' "$1"
}

merge_reduce() {  # OUT PIECE...: merge the sorted pieces, reduce into OUT
    local target=$1
    shift
    sort -m "$@" | "$reduce" > "$target"
}

half0=() half1=()
count=0
for path in "$corpus"/*; do
    [ -f "$path" ] || continue
    if [ $((count % 2)) -eq 0 ]; then half0+=("$path"); else half1+=("$path"); fi
    count=$((count + 1))
done

map_sorted "$scratch/m0" ${half0[@]+"${half0[@]}"} & first=$!
map_sorted "$scratch/m1" ${half1[@]+"${half1[@]}"} & second=$!
wait "$first"
wait "$second"

boundary=$(middle_key "$scratch/m0")
cut_offset "$scratch/m0" "$boundary" > "$scratch/cut0" & first=$!
cut_offset "$scratch/m1" "$boundary" > "$scratch/cut1" & second=$!
wait "$first"
wait "$second"
cut0=$(cat "$scratch/cut0")
cut1=$(cat "$scratch/cut1")

merge_reduce "$scratch/r0" <(head -c "$cut0" "$scratch/m0") <(head -c "$cut1" "$scratch/m1") & first=$!
merge_reduce "$scratch/r1" <(tail -c +$((cut0 + 1)) "$scratch/m0") \
                           <(tail -c +$((cut1 + 1)) "$scratch/m1") & second=$!
wait "$first"
wait "$second"

cat "$scratch/r0" "$scratch/r1" > "$out"
