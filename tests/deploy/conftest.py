"""tests/deploy: make `deploy_support` importable whatever pytest's import mode is.

The fixtures (seaweed, bucket, s3, fuse_ready) come from tests/conftest.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
