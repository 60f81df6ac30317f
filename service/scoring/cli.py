"""`rnnserve-score`: score a file of texts locally (same pipeline as the server, no server needed)
or against a running server with --url. Writes JSON Lines or CSV, one row per input row.

    rnnserve-score reviews.csv --package models/imdb-lstm/1 -o scores.jsonl
    rnnserve-score reviews.csv --url http://127.0.0.1:8000 --model imdb-lstm -o scores.csv --output-format csv
    rnnserve-score reviews.csv --package models/imdb-lstm/1 --engine ray --actors 2 -o scores/   # Ray Data
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from rnnserve.service.core.errors import UnsupportedMediaType
from rnnserve.service.core.rows import codec_for, format_of
from rnnserve.service.runtime.base import RuntimeOptions
from rnnserve.service.runtime.text import TextClassifier
from rnnserve.service.scoring.pipeline import ScoreOptions, score_stream
from rnnserve.service.settings import MAX_TEXT_CHARS

CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson", "text": "text/plain"}
CHUNK = 1 << 20


class CliError(Exception):
    pass


def input_format(path: Path, given: str | None) -> str:
    if given:
        return given
    fmt = format_of(path.name)
    if fmt is None:
        raise CliError(f"cannot tell the format of {path.name}; pass --format csv|jsonl|text")
    return fmt


def read_chunks(path: Path, progress: tqdm):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        while data := fh.read(CHUNK):
            progress.update(len(data))
            yield data


async def score_local(args, options: ScoreOptions, out) -> dict:
    runtime_options = RuntimeOptions(intra_op_threads=args.threads, max_batch_size=args.batch_size, warmup=False)
    try:
        model = await asyncio.to_thread(TextClassifier.open, args.package, runtime_options)
    except Exception as exc:  # noqa: BLE001 - any package that cannot be opened is the user's error to read
        raise CliError(f"cannot load {args.package}: {exc}") from None
    assert options.input_format is not None  # main() resolved it from the file
    reader = options.reader(options.input_format, MAX_TEXT_CHARS)
    writer = options.writer(model.labels)

    async def chunks():
        for data in read_chunks(Path(args.input), args.progress):
            yield data

    try:
        async for text in score_stream(chunks(), reader, writer, model.predict, summary=False):
            out.write(text)
            args.progress.set_postfix_str(f"{reader.rows_read} rows", refresh=False)
    finally:
        await model.close()
    return {"rows": reader.rows_read}


def score_remote(args, options: ScoreOptions, out) -> dict:
    import httpx  # here, not at the top: local scoring starts faster without it

    params = {"format": options.input_format, "text_column": options.text_column, "output": options.output_format,
              "probabilities": str(options.probabilities).lower()}
    if options.id_column:
        params["id_column"] = options.id_column
    url = f"{args.url.rstrip('/')}/v1/models/{args.model}/score"
    charset = f"; charset={options.encoding}" if options.encoding else ""
    summary: dict = {}
    rows = 0
    try:
        with httpx.Client(timeout=httpx.Timeout(30, read=None)) as client:
            with client.stream("POST", url, params=params, content=read_chunks(Path(args.input), args.progress),
                               headers={"content-type": CONTENT_TYPES[options.input_format or "text"] + charset}) as r:
                if r.status_code != 200:
                    r.read()
                    raise CliError(f"server answered {r.status_code}: {r.text}")
                for line in r.iter_lines():
                    if line.startswith('{"summary"'):
                        summary = json.loads(line)["summary"]
                        continue
                    if line.startswith("# summary"):
                        summary = dict(kv.split("=", 1) for kv in line[len("# summary "):].split())
                        continue
                    out.write(line + "\n")
                    rows += 1
                    if rows % 1000 == 0:
                        args.progress.set_postfix_str(f"{rows} rows", refresh=False)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {url}: {exc}") from None
    return summary or {"rows": rows}


def score_ray(args, options: ScoreOptions) -> dict:
    """Ray Data (the [ray] extra): a directory of Parquet or JSON Lines files, rows numbered as in the input."""
    try:
        import ray

        from rnnserve.service.engines.ray_data import score_files
    except ImportError as exc:
        raise CliError(f"--engine ray needs Ray: pip install 'rnnserve[ray]' ({exc})") from None
    if not args.output:
        raise CliError("--engine ray writes a directory of files: pass -o DIRECTORY")
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    try:
        return score_files(args.input, args.package, args.output, options, actors=args.actors,
                           threads=max(1, args.threads), batch_size=args.batch_size)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    finally:
        ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rnnserve-score", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="CSV (with header), JSON Lines or plain text; .gz is read too. With --engine "
                    "ray also Parquet, a directory, or any URI pyarrow reads (s3://...)")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--package", help="score locally with this package directory, e.g. models/imdb-lstm/1")
    where.add_argument("--url", help="score on a running server, e.g. http://127.0.0.1:8000 (needs --model)")
    ap.add_argument("--model", help="model name on the server")
    ap.add_argument("-o", "--output", help="output file (default stdout)")
    ap.add_argument("--format", choices=["csv", "jsonl", "text"], help="input format (default from the file name)")
    ap.add_argument("--output-format", choices=["jsonl", "csv", "parquet"], default="jsonl",
                    help="parquet: --engine ray only (which writes a directory of files in the format)")
    ap.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="with --package: score in this process, or on Ray Data (the [ray] extra)")
    ap.add_argument("--address", default=None, help="ray: the cluster to join (default: RAY_ADDRESS, else a "
                    "new local one)")
    ap.add_argument("--actors", type=int, default=1, help="ray: scoring actors, one CPU and one runtime each")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--id-column", default=None)
    ap.add_argument("--encoding", help="the input's charset, any of Python's codecs (default: UTF-8, or UTF-16 "
                    "when the file starts with its byte-order mark)")
    ap.add_argument("--probabilities", action="store_true", help="add every label's probability")
    ap.add_argument("--batch-size", type=int, default=256, help="local: texts per onnxruntime run")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (local, 0: usable CPUs; ray: per "
                    "actor, 0 means 1)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = Path(args.input)
    try:
        try:
            encoding = codec_for(args.encoding)
        except UnsupportedMediaType as exc:
            raise CliError(exc.message) from None
        options = ScoreOptions(input_format=args.format, text_column=args.text_column, id_column=args.id_column,
                               encoding=encoding, output_format=args.output_format, probabilities=args.probabilities)
        if args.engine == "ray":
            if not args.package:
                raise CliError("--engine ray needs --package")
            started = time.perf_counter()
            summary = score_ray(args, options)
            seconds = time.perf_counter() - started
            print(f"scored {summary['rows']} rows ({summary['errors']} errors) in {seconds:.1f} s "
                  f"({summary['rows'] / max(seconds, 1e-9):.0f} rows/s) into {args.output}", file=sys.stderr)
            return 0
        if args.output_format == "parquet":
            raise CliError("--output-format parquet needs --engine ray")
        if not path.is_file():
            raise CliError(f"input file {path} does not exist")
        if args.url and not args.model:
            raise CliError("--url needs --model NAME")
        if args.package and not (Path(args.package) / "metadata.json").is_file():
            raise CliError(f"{args.package} is not a model package directory")
        options = replace(options, input_format=input_format(path, args.format))
        out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
        started = time.perf_counter()
        total = path.stat().st_size if path.suffix != ".gz" else None
        with tqdm(total=total, unit="B", unit_scale=True, desc="scoring", file=sys.stderr,
                  disable=None) as args.progress:
            try:
                summary = (asyncio.run(score_local(args, options, out)) if args.package
                           else score_remote(args, options, out))
            finally:
                if out is not sys.stdout:
                    out.close()
        seconds = time.perf_counter() - started
        rows = int(summary.get("rows", 0))
        print(f"scored {rows} rows in {seconds:.1f} s ({rows / max(seconds, 1e-9):.0f} rows/s)", file=sys.stderr)
        return 0
    except (CliError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
