#!/bin/sh
# Word count reduce in shell: sum the counts of each run of equal keys.
export LC_ALL=C
awk -F '\t' '
  NR > 1 && $1 != key { print key "\t" total; total = 0 }
  { key = $1; total += (NF > 1 ? $2 : 1) }
  END { if (NR > 0) print key "\t" total }
'
