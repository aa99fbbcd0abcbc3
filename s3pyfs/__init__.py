"""s3pyfs: mount an S3 bucket as a POSIX-like filesystem through FUSE."""

__version__ = "0.1.0"
