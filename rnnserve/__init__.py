"""rnnserve: recurrent text models (SimpleRNN, GRU, LSTM) from a Keras notebook to a production service.

The distribution installs one namespace: `rnnserve.service` (the server, the runtimes, file scoring; the
repository's `service/` folder) and `rnnserve.training` (training and export; `training/`, the [train]
extra). The public API, importable from here:

    from rnnserve import open_model
    with open_model("models/imdb-lstm/1") as model:          # TextClassifier, SequenceModel or TextGenerator
        model.predict_batch(["a moving film"]).probabilities    # float32 [N, C]

- `open_model(path, options=RuntimeOptions())`: the runtime for a package's task (PackageError if invalid).
- `TextClassifier`, `SequenceModel`, `TextGenerator`, `RuntimeOptions`: the runtimes and their options.
- `read_package(path)`, `Package`, `PackageError`: the model package format.
- `score_files(source, package, output, options=ScoreOptions(), ...)`: score files with Ray Data (the [ray]
  extra); `ScoreOptions`: how rows are read and written (columns, formats, charset, probabilities).

Names are imported when first used, so `import rnnserve` (and the settings, the CLI's --help) stay light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "open_model": "rnnserve.service.runtime.loader",
    "RuntimeOptions": "rnnserve.service.runtime.base",
    "TextClassifier": "rnnserve.service.runtime.text",
    "SequenceModel": "rnnserve.service.runtime.sequence",
    "TextGenerator": "rnnserve.service.runtime.generator",
    "read_package": "rnnserve.service.core.package",
    "Package": "rnnserve.service.core.package",
    "PackageError": "rnnserve.service.core.package",
    "score_files": "rnnserve.service.engines.ray_data",
    "ScoreOptions": "rnnserve.service.scoring.pipeline",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'rnnserve' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
