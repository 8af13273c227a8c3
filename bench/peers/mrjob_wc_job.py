"""The mrjob Python word count job; mrjob runs this file itself for each task."""
from mrjob.job import MRJob
from mrjob.protocol import RawValueProtocol


class WordCountPython(MRJob):
    """Word count as an mrjob Python job: mapper and reducer methods."""
    OUTPUT_PROTOCOL = RawValueProtocol

    def mapper(self, _, line):
        for word in line.split():
            yield word, 1

    def reducer(self, word, counts):
        yield None, f"{word}\t{sum(counts)}"


if __name__ == "__main__":
    WordCountPython.run()
