"""The quick start: the sample word count on a local cluster."""
from conftest import WORD_COUNT, REPO, assert_matches_sequential


def test_sample_word_count_matches_sequential(cluster, tmp_path):
    """The spec's sample job gives the sequential pipeline's output."""
    cluster.start_workers(2)
    outputs = cluster.run_job(*WORD_COUNT, REPO / "input" / "sample1", tmp_path / "out")
    assert_matches_sequential(outputs, REPO / "input" / "sample1", *WORD_COUNT, 2)
