"""Create a bucket on the S3 server the environment names, as `. DIR/env` from tools/s3/s3-up.sh sets it
(AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); a bucket that exists already is fine.

Why a step of its own: the loopback server starts empty and, like real S3, does not create a bucket on the first
write (-s3.autoCreateBucket=false), and `fusionrec` never creates buckets (a typo in storage.uri must fail, not
make a new bucket). Used by `make quickstart-s3` and bench/quickstart_s3.py.

Usage: python tools/s3/create-bucket.py BUCKET      (exit 2: the environment does not name a server)
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlparse

from pyarrow import fs

NEEDED = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0]:
        print("usage: create-bucket.py BUCKET", file=sys.stderr)
        return 2
    missing = [var for var in NEEDED if not os.environ.get(var)]
    if missing:
        print(f"create-bucket: {', '.join(missing)} not set (source the env file tools/s3/s3-up.sh wrote)",
              file=sys.stderr)
        return 2
    endpoint = urlparse(os.environ["AWS_ENDPOINT_URL_S3"])
    s3 = fs.S3FileSystem(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                         region=os.environ.get("AWS_REGION") or "us-east-1", endpoint_override=endpoint.netloc,
                         scheme=endpoint.scheme or "http", allow_bucket_creation=True)
    bucket = argv[0]
    if s3.get_file_info(bucket).type == fs.FileType.NotFound:
        s3.create_dir(bucket)
        print(f"create-bucket: created s3://{bucket}", file=sys.stderr)
    else:
        print(f"create-bucket: s3://{bucket} exists", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
