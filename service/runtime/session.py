"""onnxruntime session: provider choice with CPU fallback, thread sizing from usable CPUs, warm-up."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from rnnserve.service.core.package import PackageError, StateSpec
from rnnserve.service.cpus import usable_cpus

log = logging.getLogger("rnnserve.session")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# TF32 matrix products (the CUDA provider's default on Ampere and newer) moved probabilities by up to 7e-4 from
# the CPU's on an H200 (bench/gpu_check.py); full float32 keeps the served predictions the notebook's.
CUDA_OPTIONS = {"use_tf32": "0"}


_arena_lock = threading.Lock()
_arena_shared = False


def share_cpu_arena() -> None:
    """One CPU memory arena for every session in the process. Each session's own arena keeps its largest
    batch's memory for good, and summed over models that was most of the server's RSS (754 MB with the
    bundled models); shared, memory follows the largest run instead, and `shrink_shared_arena` gives back what
    no run holds."""
    global _arena_shared
    with _arena_lock:
        if not _arena_shared:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
            _arena_shared = True


@functools.cache
def no_external_data() -> str:
    """An empty folder of this process's own, where onnxruntime is told to look for a graph's external data
    files: a graph given as bytes would otherwise read them relative to the working directory. Packages keep
    their weights inside model.onnx (the import inlines external data), so any reference fails the load."""
    folder = tempfile.mkdtemp(prefix="rnnserve-no-external-data-")
    atexit.register(_remove, folder)
    return folder


def _remove(folder: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(folder)


# An ONNX model of one Identity node (float [1] -> float [1], opset 13), as onnx.helper writes it
# (tests/service/test_runtime.py checks it): the cheapest run that can ask the shared arena to shrink.
IDENTITY_MODEL = bytes.fromhex(
    "08083a3c0a100a017812017922084964656e746974791206736872696e6b5a0f0a0178120a0a08080112040a020801620f0a017912"
    "0a0a08080112040a02080142040a00100d")


@functools.cache
def _shrinker() -> tuple[ort.InferenceSession, ort.RunOptions]:
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.use_env_allocators", "1")
    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return ort.InferenceSession(IDENTITY_MODEL, opts, providers=[CPU]), shrink


def shrink_shared_arena() -> None:
    """Give back to the system what the shared arena holds and no run uses: the arena keeps its largest run's
    memory, which was most of a worker's (a 64-text batch of the bundled ensembles: 110 MB), while shrinking it
    at every run cost 20-80% of the run. Shrinking between runs, every few seconds (ServerState), costs one
    tiny run. Nothing to do before the arena exists."""
    if _arena_shared:
        session, shrink = _shrinker()
        session.run(None, {"x": np.zeros(1, np.float32)}, shrink)


def choose_providers(setting: str) -> list:
    """The providers to ask onnxruntime for: "cpu", "cuda" (RuntimeError without onnxruntime-gpu) or "auto"."""
    available = ort.get_available_providers()
    if setting == "cpu":
        return [CPU]
    if setting == "cuda" and CUDA not in available:
        raise RuntimeError("provider=cuda but onnxruntime has no CUDAExecutionProvider (install the [gpu] extra)")
    if CUDA not in available:
        return [CPU]
    load_cuda_libraries()
    return [(CUDA, CUDA_OPTIONS), CPU]


@functools.cache
def load_cuda_libraries() -> None:
    """CUDA and cuDNN installed as pip wheels (onnxruntime-gpu's [cuda,cudnn] extras, or PyTorch's) are on no
    library path: onnxruntime-gpu finds them only once preload_dlls (1.21+) has loaded them. Libraries installed
    system-wide (the CUDA images) are found without it; preload_dlls reports what it could not load and goes on."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


@dataclass
class RunClock:
    """The onnxruntime runs of one thread since its last reset: when the first began, when the last ended
    (time.perf_counter) and their summed seconds."""

    first: float | None = None
    last: float = 0.0
    seconds: float = 0.0


class OrtSession:
    """One onnxruntime InferenceSession with the provider and threads chosen for this server; `run` is called
    from one worker thread at a time (the model's batcher). Each thread's runs are timed (`clock`), so a
    runtime can tell its onnxruntime time from its own (the statistics extension's compute_infer)."""

    def __init__(self, model: bytes, provider: str = "auto", intra_op_threads: int = 0,
                 input_name: str = "input_ids", output_name: str = "probabilities", label: str = "model.onnx"):
        """model: the serialized graph, from bytes that were checked (Package.read), never a path: onnxruntime
        then reads no file itself (none swapped after the check, no external data beside it). label: how the
        log names it."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads or usable_cpus()
        opts.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: with several worker processes on few cores, spinning
        # threads took the CPU the other workers needed (c=64 with 2 threads per worker: 3,571 vs 6,177 req/s).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        share_cpu_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", no_external_data())
        wanted = choose_providers(provider)
        try:
            self._session = _session(model, opts, wanted, label)
        except Exception:
            if wanted == [CPU] or provider == "cuda":
                raise
            log.warning("CUDA session failed; falling back to CPU", extra={"model_path": label})
            self._session = _session(model, opts, [CPU], label)
        self.provider = self._session.get_providers()[0]
        if provider == "cuda" and self.provider != CUDA:
            # onnxruntime logs a CUDA provider it cannot create and goes on with the CPU alone.
            raise RuntimeError(f"provider=cuda but onnxruntime could not create a CUDA session for {label} (no "
                               "GPU, or CUDA 13 / cuDNN 9 libraries missing: see the log above)")
        if provider == "auto" and self.provider != CUDA:
            log.info("using CPUExecutionProvider (no usable CUDA)", extra={"model_path": label})
        self.threads = opts.intra_op_num_threads
        self.input_name, self.output_name = input_name, output_name
        self._clocks = threading.local()

    def inputs(self) -> list:
        """The graph's inputs (onnxruntime NodeArgs: name, type, shape)."""
        return self._session.get_inputs()

    def outputs(self) -> list:
        return self._session.get_outputs()

    def run(self, x: np.ndarray) -> np.ndarray:
        """The main input (e.g. int64 ids [N, T] or float32 sequences [N, T, F]) -> the main output (e.g.
        float32 probabilities [N, C])."""
        return self.run_outputs([self.output_name], {self.input_name: x})[0]

    def run_outputs(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Any outputs from any inputs (graphs with carried state)."""
        started = time.perf_counter()
        out = self._session.run(names, feeds)
        clock = self.clock()
        clock.last = time.perf_counter()
        clock.seconds += clock.last - started
        if clock.first is None:
            clock.first = started
        return out

    def run_steps(self, rows: list[tuple[np.ndarray, list[np.ndarray]]], input_name: str, output_name: str,
                  states: list[StateSpec], prepare: Callable[[np.ndarray], np.ndarray] = lambda x: x) -> list:
        """A step-wise graph on rows of (input [T, ...], its states [1, H] each) -> (output row, states after it)
        each; rows of equal T share one run (prepare: applied to each run's stacked inputs). states: the
        package's state pairs (input and output names)."""
        out: list = [None] * len(rows)
        by_length: dict[int, list[int]] = {}
        for i, (x, _) in enumerate(rows):
            by_length.setdefault(len(x), []).append(i)
        names = [output_name, *(s["output"] for s in states)]
        for members in by_length.values():
            feeds = {input_name: prepare(np.stack([rows[i][0] for i in members]))}
            for k, s in enumerate(states):  # per row [1, H] -> [1, N, H]
                feeds[s["input"]] = np.stack([rows[i][1][k] for i in members], axis=1)
            result, *after = self.run_outputs(names, feeds)
            for j, i in enumerate(members):
                out[i] = (result[j], [st[:, j] for st in after])
        return out

    def clock(self, reset: bool = False) -> RunClock:
        """This thread's RunClock (a fresh one with reset)."""
        if reset or not hasattr(self._clocks, "clock"):
            self._clocks.clock = RunClock()
        return self._clocks.clock

    def warm_up(self, example: np.ndarray, batch_sizes: tuple[int, ...]) -> None:
        """Run batches of one example row repeated, so the first requests find the session's memory ready."""
        for n in batch_sizes:
            self.run(np.repeat(example, n, axis=0))


def _session(model: bytes, opts: ort.SessionOptions, providers: list, label: str) -> ort.InferenceSession:
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as exc:
        if "external" in str(exc).lower():  # "External data path ...", "... from external tensors"
            raise PackageError(f"{label} keeps weights in external data files: a package's graph is one file "
                               "(rnnserve-train import inlines external data)") from None
        raise
    # onnxruntime's Python session keeps the bytes it was built from for good, only to build itself again when
    # asked for other providers (its own comment: "This is bad as we're holding the memory indefinitely"); this
    # server never asks, and the copy was each model's size again in every worker (100 MB with the bundled ones).
    session._model_bytes = None
    return session
