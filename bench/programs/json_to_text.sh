#!/bin/sh
# A Python job's output lines ("word"<TAB>3) as the word count programs write
# them (word<TAB>3), in place: the corpus's words need no JSON escapes.
exec sed -i 's/^"\([^"\\]*\)"\t/\1\t/' "$1"
