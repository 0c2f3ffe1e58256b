"""The S3-compatible server's fixtures (tests/support/s3.py) for the archive's tests."""

from tests.support.s3 import aws_environment, moto_endpoint, s3

__all__ = ["aws_environment", "moto_endpoint", "s3"]
