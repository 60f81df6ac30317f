"""The two candidate clients for models in a bucket, on the same S3 bucket: obstore (what service/store uses) and
fsspec's s3fs (with gcsfs and adlfs for the other clouds). Times the import, one listing of every object and the
download of every object, best of --repeat. Run it with each client's Python, against a bucket that holds the
bundled models (AWS_* variables set: AWS_ENDPOINT_URL, keys, region):

    python bench/store_clients.py --client obstore s3://models/repository
    /path/to/venv-with-s3fs/bin/python bench/store_clients.py --client s3fs s3://models/repository

Uses only the client and the standard library, so each runs in a virtual environment of its own (whose size
is the install's cost: `du -sm` of its site-packages).
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--client", choices=("obstore", "s3fs"), required=True)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    started = time.perf_counter()
    if args.client == "obstore":
        import obstore
        from obstore.store import from_url

        imported = time.perf_counter() - started
        store = from_url(args.url, client_options={"allow_http": True})

        def listing() -> list[str]:
            return [m["path"] for batch in obstore.list(store) for m in batch]

        def download(key: str) -> int:
            return len(obstore.get(store, key).bytes())
    else:
        import s3fs

        imported = time.perf_counter() - started
        fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        root = args.url.removeprefix("s3://").rstrip("/")

        def listing() -> list[str]:
            fs.invalidate_cache()
            return [path.removeprefix(root + "/") for path in fs.find(root)]

        def download(key: str) -> int:
            return len(fs.cat_file(f"{root}/{key}"))

    list_s, get_s, size = [], [], 0
    for _ in range(args.repeat):
        t = time.perf_counter()
        keys = listing()
        list_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        size = sum(download(key) for key in keys)
        get_s.append(time.perf_counter() - t)
    print(json.dumps({"client": args.client, "import_s": round(imported, 3), "objects": len(keys), "bytes": size,
                      "list_s": round(min(list_s), 4), "download_s": round(min(get_s), 3),
                      "download_mb_s": round(size / min(get_s) / 1e6, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
