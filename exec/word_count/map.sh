#!/bin/sh
# Word count map in shell: one `word<TAB>1` line per whitespace-separated word.
# LC_ALL=C makes every tool work on bytes, whatever the encoding.
export LC_ALL=C
tr -s '[:space:]' '\n' | grep -v '^$' | sed 's/$/\t1/'
