"""`rnnserve-train` / `python -m rnnserve.training`: train, export, import, evaluate, quantize, seal, list presets."""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from dataclasses import fields, replace
from pathlib import Path

from rnnserve.training.config import PRESETS, TUTORIAL_ACCURACY, ConfigError, TrainConfig, preset_config
from rnnserve.training.data import DATA_DIR_ENV, DataError
from rnnserve.training.publish import PublishError, check_published, models_target, shown

# What --trust-code lets through (training/keras_load.py), said where a user reads it.
TRUST_CODE_HELP = ("load a SavedModel directory: loading one runs the TensorFlow operations stored in it (its "
                   "resource initializers), which may read and write files with your permissions; give it only for "
                   "a SavedModel you made or trust. Lambda layers and custom objects are refused even so")


def _optional_int(value: str) -> int | None:
    return None if value.lower() in ("none", "0", "") else int(value)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, so every hyper-parameter can be overridden from the shell."""
    group = parser.add_argument_group("hyper-parameters (override the preset)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif kind in (int | None,):
            group.add_argument(flag, dest=f.name, type=_optional_int, default=None, metavar="N|none")
        else:
            base = {int: int, float: float}.get(kind, str)
            group.add_argument(flag, dest=f.name, type=base, default=None)


def _config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The preset (over base, when given), then the flags."""
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    start = base.to_dict() if base else {}
    if args.preset:
        preset_config(args.preset)  # an unknown preset is named
        return TrainConfig.from_dict({**start, **PRESETS[args.preset], **overrides})
    if "dataset" not in {**start, **overrides}:
        raise ConfigError("give --preset NAME or --dataset (imdb, reuters or a CSV/JSONL file)")
    return TrainConfig.from_dict({**start, **overrides})


def cmd_train(args: argparse.Namespace) -> int:
    """`train`, and `distill` (a train with a teacher, whose configuration is the student's starting point)."""
    from rnnserve.training.distill import Distillation
    from rnnserve.training.train import train

    distillation = None
    if getattr(args, "teacher", None):
        distillation = Distillation(Path(args.teacher), args.temperature, args.alpha)
        cfg = _config_from_args(args, replace(distillation.teacher_config(), ensemble=1))
    else:
        cfg = _config_from_args(args)
    name = args.name or args.preset or Path(cfg.dataset).stem
    out = Path(args.out or Path("runs") / name)
    if args.validation_only and args.export:
        raise ConfigError("--validation-only leaves the test split out, and a package reports its test figures: "
                          "drop --export, or --validation-only for the final run")
    if args.export:
        from rnnserve.training.export import check_target

        check_target(args.models_dir, args.export, args.version, args.overwrite)  # before the training
        check_published(args.models_dir, args.export, args.version, args.overwrite)
    metrics = train(cfg, out, args.data_dir, verbose=1 if args.progress else 2,
                    evaluate_test=not args.validation_only, distillation=distillation)
    print(json.dumps({"run_dir": str(out), **metrics}, indent=2))
    if args.preset in TUTORIAL_ACCURACY and "test" in metrics:
        print(f"tutorial reports {TUTORIAL_ACCURACY[args.preset]:.2%}; this run {metrics['test']['accuracy']:.2%}")
    if args.export:
        from rnnserve.training.export import export_run

        with models_target(args.models_dir, args.export, args.version, args.overwrite) as models_dir:
            export_run(out, models_dir, args.export, args.version, args.data_dir, overwrite=args.overwrite)
        print(f"exported {shown(args.models_dir, args.export, args.version)}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from rnnserve.training.reproduce import markdown, reproduce

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if f.name != "seed" and getattr(args, f.name) is not None}
    presets = args.presets or list(TUTORIAL_ACCURACY)
    for name in presets:
        preset_config(name)  # an unknown preset is an error before hours of training
    rows = reproduce(presets, args.seeds, args.out, args.data_dir, **overrides)
    print(f"wrote {Path(args.out) / 'reproduce.md'} and reproduce.json")
    print(markdown(rows), end="")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from rnnserve.training.train import evaluate_run_on_test

    metrics = evaluate_run_on_test(args.run_dir, args.data_dir)
    print(json.dumps({"run_dir": args.run_dir, "validation": metrics.get("validation"), "test": metrics["test"]},
                     indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rnnserve.training.export import export_run

    with models_target(args.models_dir, args.name, args.version, args.overwrite) as models_dir:
        path = export_run(args.run_dir, models_dir, args.name, args.version, args.data_dir,
                          parity_examples=args.parity_examples, atol=args.atol, overwrite=args.overwrite,
                          native=not args.loop_export)
        meta = json.loads((path / "metadata.json").read_text())
    print(json.dumps({"package": shown(args.models_dir, args.name, args.version), "parity": meta["parity"],
                      "test": meta["metrics"]["test"]}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rnnserve.training.evaluate import evaluate_package

    result = evaluate_package(args.package, args.data_dir)
    print(json.dumps(result, indent=2))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, overrides in PRESETS.items():
        reported = f" (tutorial: {TUTORIAL_ACCURACY[name]:.2%})" if name in TUTORIAL_ACCURACY else ""
        print(f"{name}{reported}\n    " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    return 0


def cmd_quantize(args) -> int:
    from rnnserve.service.core.package import read_package
    from rnnserve.training.quantize import QuantizeError, quantize_package

    try:
        with models_target(args.models_dir, args.name, args.version, args.overwrite) as models_dir:
            path = quantize_package(args.package, models_dir, args.name, args.version, args.data_dir,
                                    args.max_loss, args.overwrite)
            gate = read_package(path).metadata.quantization["validation_gate"]
    except QuantizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {shown(args.models_dir, args.name, args.version)}: {gate['split']} accuracy "
          f"{gate['accuracy_float']:.2%} float, {gate['accuracy_int8']:.2%} INT8 ({gate['examples']} examples)")
    return 0


def cmd_import(args) -> int:
    from rnnserve.training.importer import Gate, Preprocessing, import_model
    from rnnserve.training.onnx_import import import_onnx

    prep = Preprocessing(vocabulary=args.vocabulary, tokenizer_json=args.tokenizer_json,
                         text_vectorization=args.text_vectorization, vocab_file=args.vocab, maxlen=args.maxlen,
                         padding=args.padding, truncating=args.truncating, num_words=args.num_words,
                         skip_top=args.skip_top, lower=args.lower, punctuation=args.punctuation,
                         token_pattern=args.token_pattern, unknown_token=args.unknown_token,
                         pad_token=args.pad_token, start_token=args.start_token, end_token=args.end_token,
                         hf_tokenizer=args.hf_tokenizer,
                         data_dir=args.data_dir,
                         allow_unused_rows=args.allow_unused_rows)
    gate = Gate(texts=args.parity_texts, text_column=args.text_column, reference=args.reference,
                accept_unchecked=args.accept_unchecked, examples=args.parity_examples, atol=args.atol,
                reference_texts=args.reference_texts)
    labels = _labels(args.labels)
    with models_target(args.models_dir, args.name, args.version, args.overwrite) as models_dir:
        if Path(args.model).suffix == ".onnx":
            path = import_onnx(args.model, models_dir, args.name, prep, gate, version=args.version, labels=labels,
                               output=args.output, overwrite=args.overwrite)
        else:
            path = import_model(args.model, models_dir, args.name, prep, gate, version=args.version, labels=labels,
                                output=args.output, overwrite=args.overwrite, trust_code=args.trust_code)
        meta = json.loads((path / "metadata.json").read_text())
    print(json.dumps({"package": shown(args.models_dir, args.name, args.version), "parity": meta["parity"]},
                     indent=2))
    if reason := meta["source"]["preprocessing"].get("read_from_archive"):
        print(f"note: Keras cannot load the TextVectorization back ({reason}); its configuration and vocabulary "
              "were read from the archive itself, and the gate ran the layer rebuilt from them", file=sys.stderr)
    if meta["parity"].get("checked", "").startswith("shapes only"):
        print("warning: only shapes were checked; give --reference with your ids and/or outputs for the "
              "--parity-texts to compare them", file=sys.stderr)
    return 0


def cmd_profile(args) -> int:
    """Add or refresh a package's drift profile (profile.json) from a file of texts, and seal it again."""
    from rnnserve.service.core.package import PackageError
    from rnnserve.training.profiling import profile_package, read_texts, sample

    try:
        texts = sample(read_texts(args.texts, args.text_column, args.max_texts), args.limit)
        source = args.source or f"{len(texts)} texts sampled (seed 0) from {args.texts.name}"
        built = profile_package(args.package, texts, source)
    except (PackageError, OSError, ValueError) as exc:
        print(f"error: {args.package}: {exc}", file=sys.stderr)
        return 2
    print(f"{args.package}: profile.json written from {built.texts} texts ({built.source}); sealed")
    return 0


def cmd_seal(args) -> int:
    """Write manifest.json for packages written before the whole-package manifest (needs no TensorFlow)."""
    from rnnserve.service.core.package import MANIFEST, PackageError, parse_metadata, read_package, seal, sha256_file

    for path in map(Path, args.packages):
        try:
            if (path / MANIFEST).exists() and not args.again:
                read_package(path)  # a sealed package stays as sealed unless it is asked for again
                print(f"{path}: sealed already")
                continue
            metadata = parse_metadata((path / "metadata.json").read_bytes())
            if sha256_file(path / "model.onnx") != metadata.onnx.sha256:
                raise PackageError("model.onnx does not match the sha256 in its metadata.json: not sealing a "
                                   "package that changed since it was written")
            seal(path)
            read_package(path)
        except (PackageError, OSError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
        print(f"{path}: sealed ({MANIFEST} written)")
    return 0


def _labels(value: str | None) -> list[str] | None:
    """--labels a,b,c or --labels @FILE (one a line)."""
    if value is None:
        return None
    if value.startswith("@"):
        try:
            lines = Path(value[1:]).read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--labels {value}: cannot read {value[1:]}: {exc}") from None
        return [line.strip() for line in lines if line.strip()]
    return [label.strip() for label in value.split(",")]


def _add_run_flags(p: argparse.ArgumentParser, data_help: str) -> None:
    """train's and distill's flags: where the run and package go, and the configuration."""
    p.add_argument("--preset", help=f"one of: {', '.join(PRESETS)}")
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV), help=data_help)
    p.add_argument("--out", help="run directory (default runs/NAME)")
    p.add_argument("--name", help="run and model name (default the preset or file name)")
    p.add_argument("--export", metavar="MODEL_NAME", help="export the trained model as this package name")
    p.add_argument("--models-dir", default="models", help="a folder, or a bucket URL (s3://BUCKET/PREFIX, gs://..., "
                   "az://CONTAINER/PREFIX): the package is written locally, then uploaded, its manifest last")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace an existing package version")
    p.add_argument("--validation-only", action="store_true",
                   help="report the validation split only and leave the test split untouched (for choosing "
                        "between configurations; evaluate the chosen one on the test split once)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stdout.isatty(),
                   help="Keras progress bars (default: when on a terminal; else one line per epoch)")
    _add_config_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnserve-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data_help = f"local copy of the Keras datasets (default ${DATA_DIR_ENV}; else Keras downloads them)"

    p = sub.add_parser("train", help="train a classifier into a run directory (and optionally export it)")
    _add_run_flags(p, data_help)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="train a student on a teacher package's probabilities and the labels "
                       "(starting from the teacher's configuration, one model)")
    p.add_argument("--teacher", required=True, help="the teacher package, e.g. models/imdb-lstm-ensemble/1")
    p.add_argument("--temperature", type=float, default=2.0, help="T > 0 softening both distributions")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="the true labels' share of the loss (the teacher's: 1 - alpha)")
    _add_run_flags(p, data_help)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="train presets with several seeds: test accuracy mean, sd, min, max "
                       "beside the tutorials' figures")
    p.add_argument("presets", nargs="*", help="presets (default: every tutorial preset)")
    p.add_argument("--seeds", type=int, default=5, help="runs per preset, seeds 1337, 1338, ...")
    p.add_argument("--out", default="runs/reproduce", help="run directories and reproduce.{json,md}")
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV), help=data_help)
    _add_config_flags(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("test", help="evaluate a --validation-only run on the test split (once, for the "
                       "configuration chosen on validation), so it can be exported")
    p.add_argument("run_dir")
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV), help=data_help)
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("export", help="convert a run to ONNX, check parity, write a model package")
    p.add_argument("run_dir")
    p.add_argument("--name", required=True, help="package name, e.g. imdb-lstm")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--models-dir", default="models", help="a folder, or a bucket URL (s3://BUCKET/PREFIX, gs://..., "
                   "az://CONTAINER/PREFIX): the package is written locally, then uploaded, its manifest last")
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV), help=data_help)
    p.add_argument("--parity-examples", type=int, default=1000, help="test sequences in the parity gate")
    p.add_argument("--atol", type=float, default=1e-5, help="largest allowed |keras - onnx| probability")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--loop-export", action="store_true",
                   help="keep tf2onnx's Loop subgraphs instead of native RNN/GRU/LSTM nodes (slower; for comparison)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="test-split metrics of a package through onnxruntime")
    p.add_argument("package", help="a package directory, e.g. models/imdb-lstm/1")
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV), help=data_help)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("quantize", help="an INT8 copy of a text classifier's package (onnxruntime dynamic "
                       "quantization), refused past a loss of validation accuracy")
    p.add_argument("package", help="a package directory, e.g. models/imdb-lstm/1")
    p.add_argument("--name", required=True, help="the INT8 package's name, e.g. imdb-lstm-int8")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--models-dir", default="models", help="a folder, or a bucket URL (s3://BUCKET/PREFIX, gs://..., "
                   "az://CONTAINER/PREFIX): the package is written locally, then uploaded, its manifest last")
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV), help=data_help)
    p.add_argument("--max-loss", type=float, default=0.3, help="most validation accuracy points INT8 may lose")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("import", help="a model trained elsewhere (Keras .keras/.h5/SavedModel, or ONNX) with its "
                       "own text preprocessing -> a package, through the parity gate against your own pipeline")
    p.add_argument("model", help="a .keras or .h5 file, a SavedModel directory, or a .onnx file")
    p.add_argument("--name", required=True, help="package name")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--models-dir", default="models", help="a folder, or a bucket URL (s3://BUCKET/PREFIX, gs://..., "
                   "az://CONTAINER/PREFIX): the package is written locally, then uploaded, its manifest last")
    p.add_argument("--overwrite", action="store_true")
    g = p.add_argument_group("preprocessing (one of; none when the model starts with a TextVectorization layer)")
    g.add_argument("--vocabulary", choices=("imdb", "reuters"),
                   help="the Keras dataset's ids (keras.datasets.NAME.load_data)")
    g.add_argument("--tokenizer-json", type=Path, help="tf-keras Tokenizer.to_json() saved to a file")
    g.add_argument("--text-vectorization", type=Path, help='a TextVectorization saved beside the model: JSON '
                   '{"config": layer.get_config(), "vocabulary": layer.get_vocabulary()} or a .keras file')
    g.add_argument("--vocab", type=Path, help="ONNX models: a vocabulary, vocab.txt (one token a line, line i = id "
                   "i) or vocab.json (a {token: id} object, json.dump(vocab, f)); the rules below as your notebook "
                   "applies them")
    g.add_argument("--hf-tokenizer", type=Path, help="ONNX models: a Hugging Face tokenizers file (tokenizer.json): "
                   "WordLevel, no normalizer or Lowercase, WhitespaceSplit; others are refused with the reason")
    g.add_argument("--maxlen", type=int, help="pad_sequences' maxlen (default: the model's input length)")
    g.add_argument("--padding", choices=("pre", "post"), default="pre", help="pad_sequences' padding")
    g.add_argument("--truncating", choices=("pre", "post"), default="pre", help="pad_sequences' truncating")
    g.add_argument("--num-words", type=_optional_int, help="load_data's num_words (--vocabulary)")
    g.add_argument("--skip-top", type=int, default=0, help="load_data's skip_top (--vocabulary)")
    g.add_argument("--lower", action=argparse.BooleanOptionalAction, default=True,
                   help="--vocab: lower-case with Python's str.lower()")
    g.add_argument("--punctuation", choices=("keep", "space", "delete"), default="keep",
                   help="--vocab: the 32 ASCII punctuation marks (string.punctuation) kept, each replaced by a space, "
                   "or deleted, after lower-casing")
    g.add_argument("--token-pattern", metavar="REGEX", help="--vocab: tokens are re.findall(REGEX, text) (Python re, "
                   r"e.g. '\w+' or scikit-learn's '(?u)\w\w+'); default: text.split()")
    g.add_argument("--unknown-token", help="--vocab: the token unknown words become (else they are dropped)")
    g.add_argument("--pad-token", help="--vocab: the token whose id pads (default: id 0)")
    g.add_argument("--start-token", help="--vocab: a token whose id goes before each text's")
    g.add_argument("--end-token", help="--vocab: a token whose id goes after each text's (before padding and "
                   "truncating, as the start token's)")
    g.add_argument("--allow-unused-rows", action="store_true", help="accept a preprocessing whose ids reach less "
                   "than 90%% of the model's embedding rows (refused by default: a smaller vocabulary than the "
                   "model was trained with passes the gate)")
    p.add_argument("--labels", help="class names in output order: a,b,c or @FILE (default: the dataset's, or 0..C-1)")
    p.add_argument("--output", choices=("probabilities", "logits"), default="probabilities",
                   help="what the model's last layer gives; logits are served through a sigmoid/softmax")
    p.add_argument("--parity-texts", type=Path, help="CSV/JSONL/text file of texts for the parity gate "
                   "(default for --vocabulary: the dataset's documents from --data-dir)")
    p.add_argument("--text-column", default="text", help="the texts' column or key in --parity-texts")
    p.add_argument("--reference", type=Path, help="ONNX models: .npz with your `ids` and/or `outputs` for the "
                   "--parity-texts, in order (required, or --accept-unchecked)")
    p.add_argument("--accept-unchecked", action="store_true", help="ONNX models without --reference: write the "
                   "package having checked only that it runs and its shapes; nothing compares its ids or outputs "
                   "with your notebook's")
    p.add_argument("--reference-texts", type=Path, help="CSV/JSONL/text file of texts the drift profile "
                   "(profile.json) is computed on, sampled (default: the parity texts)")
    p.add_argument("--parity-examples", type=int, default=1000, help="most texts in the gate")
    p.add_argument("--atol", type=float, default=1e-5, help="largest allowed |yours - package| probability")
    p.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV), help=data_help)
    p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("presets", help="list the presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("profile", help="add or refresh a text classifier's drift profile (profile.json) from a "
                       "file of reference texts (its training texts), and seal the package again")
    p.add_argument("package", type=Path, metavar="MODELS/NAME/VERSION")
    p.add_argument("--texts", type=Path, required=True, help="CSV/JSONL/text file (gzip too) of the texts")
    p.add_argument("--text-column", default="text", help="the texts' column (CSV) or key (JSONL)")
    p.add_argument("--limit", type=int, default=2000, help="texts sampled from the file (seed 0)")
    p.add_argument("--max-texts", type=int, default=100_000, help="texts read from the file before sampling")
    p.add_argument("--source", help="where the texts came from, recorded in the profile (default: the file's name)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("seal", help="write manifest.json (every file's sha256) for packages written before the "
                       "server required one, after checking model.onnx against its metadata")
    p.add_argument("packages", nargs="+", metavar="MODELS/NAME/VERSION")
    p.add_argument("--again", action="store_true", help="seal a package that has a manifest anew, accepting its "
                   "files as they are now")
    p.set_defaults(func=cmd_seal)
    return parser


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines (oneDNN, CUDA probing, CPU features) kept off the terminal.
    They are written through absl before any log level applies, so TF_CPP_MIN_LOG_LEVEL alone cannot stop
    them: the process's stderr points at /dev/null for the import. TF_CPP_MIN_LOG_LEVEL=0 shows them all."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("0", "1"):
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func in (cmd_seal, cmd_profile):  # the serving install has no training extra
        return args.func(args)
    if args.func in (cmd_train, cmd_export, cmd_reproduce, cmd_quantize, cmd_import):  # these import TensorFlow
        import_tensorflow_quietly()
    from rnnserve.training.export import ExportError  # keeps --help free of TensorFlow start-up

    try:
        return args.func(args)
    except (ConfigError, DataError, ExportError, PublishError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
