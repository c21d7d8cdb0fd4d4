#!/usr/bin/env python3
"""Small helper for the moto S3 server of the integration stack (runs in the moto venv: boto3).

moto keeps everything in memory, so the stack saves the bucket to a snapshot directory before
stopping moto and restores it after starting it again.

    s3_tool.py ENDPOINT BUCKET ensure            create the bucket if missing
    s3_tool.py ENDPOINT BUCKET save DIR          bucket -> DIR (replaces DIR's content)
    s3_tool.py ENDPOINT BUCKET restore DIR       DIR -> bucket (creates the bucket)
    s3_tool.py ENDPOINT BUCKET count             print the number of objects
    s3_tool.py ENDPOINT BUCKET clear             delete every object
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )


def ensure(s3, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)


def keys(s3, bucket: str) -> list[str]:
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.extend(item["Key"] for item in page.get("Contents", []))
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, bucket, command = argv[1], argv[2], argv[3]
    s3 = client(endpoint)
    if command == "ensure":
        ensure(s3, bucket)
    elif command == "count":
        ensure(s3, bucket)
        print(len(keys(s3, bucket)))
    elif command == "clear":
        ensure(s3, bucket)
        for key in keys(s3, bucket):
            s3.delete_object(Bucket=bucket, Key=key)
    elif command == "save":
        target = Path(argv[4])
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "objects").mkdir(parents=True)
        index = {}
        ensure(s3, bucket)
        for number, key in enumerate(keys(s3, bucket)):
            obj = s3.get_object(Bucket=bucket, Key=key)
            name = f"{number:08d}"
            (tmp / "objects" / name).write_bytes(obj["Body"].read())
            index[name] = {"key": key, "content_type": obj.get("ContentType")}
        (tmp / "index.json").write_text(json.dumps(index))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        print(f"saved {len(index)} object(s)")
    elif command == "restore":
        source = Path(argv[4])
        ensure(s3, bucket)
        index_file = source / "index.json"
        index = json.loads(index_file.read_text()) if index_file.exists() else {}
        for name, meta in index.items():
            extra = {"ContentType": meta["content_type"]} if meta.get("content_type") else {}
            s3.put_object(Bucket=bucket, Key=meta["key"], Body=(source / "objects" / name).read_bytes(), **extra)
        print(f"restored {len(index)} object(s)")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
