"""Word count as a Python job (mrlib.Job): with its combiner, and without."""
from mrlib import Job


class WordCountPlain(Job):
    def mapper(self, key, line):
        for word in line.split():
            yield word, 1

    def reducer(self, word, counts):
        yield word, sum(counts)


class WordCount(WordCountPlain):
    def combiner(self, word, counts):
        yield word, sum(counts)
