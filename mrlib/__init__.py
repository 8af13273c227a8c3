"""The MapReduce server's library; `from mrlib import Job` for Python jobs."""
from mrlib.pyjob import Job, JobFailed

__all__ = ["Job", "JobFailed"]
