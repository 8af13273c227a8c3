"""Peer: Spark local[N] word count, with our map executable or in Python.

    python spark_wc.py CORPUS_DIR OUT_FILE [--cores N] [--pipe]

--pipe: rdd.pipe(exec/word_count/map.py), then reduceByKey, as Hadoop
Streaming users port their programs. Without it: flatMap / reduceByKey.
"""
import operator
import sys

from pyspark import SparkConf, SparkContext

from common import MAP, corpus_files, write_counts


def parse_line(line):
    word, _, count = line.partition("\t")
    return word, int(count or 1)


def main():
    pipe = "--pipe" in sys.argv
    sys.argv = [arg for arg in sys.argv if arg != "--pipe"]
    from common import parse_args
    args = parse_args(__doc__.splitlines()[0])
    conf = SparkConf().setMaster(f"local[{args.cores}]").setAppName("wordcount")
    conf = (conf.set("spark.ui.enabled", "false").set("spark.ui.showConsoleProgress", "false")
            .set("spark.driver.memory", "4g"))
    context = SparkContext(conf=conf)
    context.setLogLevel("ERROR")
    try:
        lines = context.textFile(",".join(corpus_files(args.corpus)))
        if pipe:
            pairs = lines.pipe(MAP).map(parse_line)
        else:
            pairs = lines.flatMap(str.split).map(lambda word: (word, 1))
        write_counts(pairs.reduceByKey(operator.add).collect(), args.out)
    finally:
        context.stop()


if __name__ == "__main__":
    main()
