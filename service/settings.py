"""All server settings in one typed object: environment variables (RNNSERVE_*) or command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rnnserve.service.cpus import usable_cpus
from rnnserve.service.store import StoreOptions, default_cache_dir, is_store_url

MAX_TEXT_CHARS = 100_000  # the default limit on one text, for the server and the command-line scorer
STATE_DIR_ENV = "RNNSERVE_STATE_DIR"  # set by the server's entry point for its workers (Settings.state_dir)
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    """Server settings. Model-specific facts (labels, maxlen, tokenizer) live in each package instead."""

    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", cli_prog_name="rnnserve", cli_kebab_case=True,
                                      cli_implicit_flags=True, protected_namespaces=())

    models_dir: Path = Field(BUNDLED_MODELS, description="Model repository: NAME/VERSION/ package directories, or "
                             "a bucket URL (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://CONTAINER/PREFIX) whose "
                             "versions are copied into models_cache_dir and verified before they are served; this "
                             "setting then becomes the cache's repository folder and models_store the URL.")
    models_store: str = Field("", description="The bucket URL models_dir named (set from it; empty: a local "
                              "repository).")
    models_cache_dir: Path | None = Field(None, description="A bucket's local cache, shared by the server's "
                                          "workers (default: a folder for the URL under the temporary directory).")
    models_cache_max_bytes: int = Field(10 * 1024**3, ge=1, description="Most bytes of packages in the cache; a "
                                        "version that would pass it is refused (and tried again at each poll).")
    store_endpoint: str = Field("", description="An S3-compatible, GCS or Azure endpoint URL (MinIO, Ceph, "
                                "Azurite); default: AWS_ENDPOINT_URL, AZURE_STORAGE_ENDPOINT, ... or the cloud's.")
    store_region: str = Field("", description="The bucket's S3 region; default: AWS_REGION or the profile's.")
    store_tls_verify: bool = Field(True, description="Verify the store's TLS certificate (off: any is accepted).")
    store_ca_file: Path | None = Field(None, description="PEM certificates trusted for the store besides the "
                                       "system's (a private CA in front of MinIO or Ceph).")
    store_timeout_s: float = Field(30.0, gt=0, description="Longest wait for one store request, retries included.")
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    grpc_port: int = Field(8001, ge=0, le=65535, description="Port of the V2 inference protocol over gRPC "
                           "(inference.GRPCInferenceService), in every worker; 0: no gRPC.")
    grpc_server: Literal["grpcio", "native"] = Field(
        "grpcio", description="The gRPC server under the same handlers: grpcio's, or pygrpc-native's (the "
        "[grpc-native] extra: HTTP/2 in Rust outside the GIL, about twice the single-text throughput at 16+ "
        "clients, but without MAX_GRPC_CONNECTIONS, GRPC_IDLE_S and the handshake deadline).")
    grpc_reflection: bool = Field(False, description="gRPC server reflection (grpcurl and other tools can list the "
                                  "services without the .proto files); off, as in Triton.")
    max_grpc_connections: int = Field(256, ge=1, description="Open gRPC connections per server (each worker takes "
                                      "its share); more are refused by grpcio before their handshake. HTTP's "
                                      "MAX_CONNECTIONS is apart: keep both within the descriptor limit.")
    grpc_idle_s: float = Field(300.0, gt=0, description="A gRPC connection with no call this long is closed "
                               "(GOAWAY: clients reconnect when they next call).")
    server: Literal["uvicorn", "granian"] = Field("uvicorn", description="HTTP server: uvicorn with httptools and "
                                                  "uvloop (the faster here, bench/load.py), or Granian (the [granian] "
                                                  "extra).")
    workers: int = Field(0, ge=0, description="Server processes, each with every model and its own batcher; 0: one "
                         "per CPU this process may use (affinity and cgroup quota). Memory grows per process.")
    provider: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="onnxruntime provider: auto uses CUDA when onnxruntime-gpu and a GPU are present.")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads per model; 0: the usable CPUs divided "
                                  "by workers.")
    max_batch_size: int = Field(64, ge=1, description="Most texts coalesced into one onnxruntime run.")
    max_batch_delay_ms: float = Field(0.0, ge=0, description="Longest wait for a batch to fill. 0 (default) takes "
                                      "what is queued: under load the next batch fills while one runs, and a lone "
                                      "request waits for nothing.")
    max_queue: int = Field(2048, ge=1, description="Queued requests per model and worker before 503 + "
                           "Retry-After (each worker batches on its own).")
    max_texts_per_request: int = Field(256, ge=1, description="Texts in one predict/infer request (else 413).")
    max_text_chars: int = Field(MAX_TEXT_CHARS, ge=1, description="Characters in one text (else 413).")
    max_explain_words: int = Field(2000, ge=1, description="Words in one text to explain (else 413); an "
                                   "explanation runs the model once per word it sees, up to maxlen.")
    max_explanations: int = Field(2, ge=1, description="Explanations running at once per model and server (each "
                                  "worker takes its share, at least one); more get 503 + Retry-After. Each runs the "
                                  "model up to maxlen + 1 times, a run at a time, and /predict goes between them.")
    max_generate_chars: int = Field(2000, ge=1, description="Characters one /generate request may ask for "
                                    "(else 413).")
    max_generations: int = Field(32, ge=1, description="Generations running at once per model and server (each "
                                 "worker takes its share, at least one); more get 503 + Retry-After.")
    sequence_idle_s: float = Field(60.0, gt=0, description="The sequence extension: a sequence idle this long "
                                   "is dropped (its next step must start it again).")
    max_sequences: int = Field(1000, ge=1, description="The sequence extension: sequences open per model version "
                               "and server; starting one more evicts the least recently used.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1, description="Request body size (else 413).")
    max_header_bytes: int = Field(65_536, ge=1024, description="Request line and headers (else 431 and the "
                                  "connection closed).")
    header_timeout_s: float = Field(10.0, gt=0, description="How long a connection may take to send a request's "
                                    "head; silent or trickling connections are closed.")
    max_connections: int = Field(1000, ge=1, description="Open connections per server (each worker takes its "
                                 "share); more are refused (closed at once) and logged. Keep a worker's share "
                                 "under the process's descriptor limit.")
    repository_poll_s: float = Field(0.0, ge=0, description="Scan the model repository this often and load new "
                                     "version directories (unload removed ones) on every worker; 0: off.")
    shadow_max_pending: int = Field(2, ge=1, description="Shadow runs (rollout: a version also run on a share of "
                                    "predictions, compared) one worker holds at once, waiting or running; more are "
                                    "shed and counted.")
    shadow_max_queue: int = Field(0, ge=0, description="A shadow run is shed (and counted) when the primary "
                                  "version's batcher has more than this many requests waiting: primary work first.")
    control_timeout_s: float = Field(120.0, gt=0, description="How long a load, reload or unload waits for every "
                                     "worker to apply it before answering 504 with the workers that did not.")
    max_score_bytes: int = Field(4 * 1024**3, ge=1, description="Upload size for file scoring (else 413).")
    ui: bool = Field(True, description="Serve the built-in page at /ui (/ redirects there); off for locked-down "
                     "deployments.")
    warmup: bool = Field(True, description="Run each model once at load; readiness waits for it.")
    shutdown_grace_s: float = Field(30.0, ge=0, description="On SIGTERM or unload: how long requests in flight "
                                    "and queued batches may take to finish.")
    api_keys: str = Field("", description="Comma-separated API keys; when set (or api_keys_file), every endpoint "
                          "but liveness and readiness needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.",
                          repr=False)
    api_keys_file: Path | None = Field(None, description="File with one API key per line.")
    metrics_public: bool = Field(True, description="With API keys set, leave /metrics open to scrapers.")
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS (off when empty).")
    log_level: str = Field("info", description="Python log level.")
    log_json: bool = Field(True, description="One JSON object per log line.")
    access_log: bool = Field(True, description="Log one line per request.")
    payload_log: bool = Field(False, description="Payload logging: a sample of requests and responses, and every "
                              "failure, as CloudEvents (KServe's inference logger's types) to payload_log_sink, from "
                              "a bounded queue per worker; logging never delays or fails an answer.")
    payload_log_rate: float = Field(0.1, ge=0, le=1, description="Share of requests logged (each one drawn at "
                                    "random; file scoring: of a file's rows). Failures are always logged.")
    payload_log_rates: str = Field("", description="Per-model rates over payload_log_rate, comma-separated "
                                   "NAME=RATE (e.g. imdb-lstm=1,reuters-gru=0).")
    payload_log_mode: Literal["all", "request", "response"] = Field(
        "all", description="What a sampled request logs: its request and its response events, or one of them.")
    payload_log_text: Literal["whole", "sha256", "none"] = Field(
        "sha256", description="How texts appear in the events: whole, as the hex sha256 of their UTF-8 bytes, or "
        "not at all (only their count).")
    payload_log_sink: str = Field("rnnserve-payloads.jsonl", description="Where events go: a JSON Lines file "
                                  "(structured CloudEvents, one a line; rotated at payload_log_max_bytes, shared by "
                                  "the workers), or an http(s):// URL each event is POSTed to in CloudEvents' "
                                  "binary mode, as KServe's logger does.")
    payload_log_max_bytes: int = Field(100 * 1024**2, ge=1024, description="The file sink's size before it is "
                                       "rotated (FILE -> FILE.1 -> ... FILE.N).")
    payload_log_backups: int = Field(5, ge=1, description="Rotated files the file sink keeps.")
    payload_log_queue: int = Field(10_000, ge=1, description="Events waiting per worker; past it new ones are "
                                   "dropped (and counted in rnnserve_payload_events_total{outcome=\"dropped\"}).")
    payload_log_timeout_s: float = Field(5.0, gt=0, description="The HTTP sink's longest wait for one POST.")
    tracing: bool = Field(False, description="OpenTelemetry traces of inference and model requests (the [otel] "
                          "extra), configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT, "
                          "OTEL_TRACES_SAMPLER, ...); a configuration that cannot work disables tracing with a "
                          "warning. Off: nothing is checked per request.")
    telemetry: bool = Field(False, description="FastAPI's OpenTelemetry instrumentation (traces, metrics, logs to a "
                            "configured OpenTelemetry SDK). Off, no request pays for checking whether it is set up.")

    drift: bool = Field(True, description="Measure drift: each text classifier's recent texts and predictions "
                        "against its package's reference profile (docs/drift.md); off, predictions are not watched.")
    drift_window: int = Field(1000, ge=10, description="Texts in the drift window per model version, the whole "
                              "server's (each worker keeps its share of the most recent).")
    drift_min_count: int = Field(100, ge=1, description="Texts a signal's window needs before it is scored (fewer: "
                                 "no score; PSI's noise is about bins / texts).")

    state_dir: Path | None = Field(None, description="Set by the server for its worker processes: the directory "
                                   "they share for model control, metrics and sequences (not a setting to give).")

    @model_validator(mode="before")
    @classmethod
    def _mirror_a_bucket(cls, data: Any) -> Any:
        """A bucket URL in models_dir: the server reads the bucket's verified copies in the cache (service/store),
        so models_dir becomes that folder and models_store keeps the URL (workers get both through to_env)."""
        if isinstance(data, dict) and is_store_url(data.get("models_dir")):
            url = data["models_dir"]
            cache = Path(data.get("models_cache_dir") or default_cache_dir(url))
            data = {**data, "models_store": url, "models_cache_dir": cache, "models_dir": cache / "repository"}
        elif isinstance(data, dict) and data.get("models_store") and not (
                is_store_url(data["models_store"]) and data.get("models_cache_dir")
                and Path(data.get("models_dir", "")) == Path(data["models_cache_dir"]) / "repository"):
            raise ValueError("models_store is set from models_dir: give the bucket URL as models_dir instead")
        return data

    @model_validator(mode="after")
    def _check_rates(self) -> Settings:
        self.payload_rates()
        return self

    def store_options(self) -> StoreOptions:
        return StoreOptions(endpoint=self.store_endpoint, region=self.store_region, tls_verify=self.store_tls_verify,
                            ca_file=self.store_ca_file, timeout_s=self.store_timeout_s)

    def worker_count(self) -> int:
        return self.workers or usable_cpus()

    def per_worker(self, limit: int) -> int:
        """A per-server limit's share for one worker process (at least 1). The server's entry point sets
        `workers` for its processes; an app made in-process (workers 0) is the one process."""
        return max(1, -(-limit // (self.workers or 1)))

    def keys(self) -> list[str]:
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            # utf-8-sig: a key file saved with a byte-order mark (Notepad) keeps its first key
            lines = self.api_keys_file.read_text(encoding="utf-8-sig").splitlines()
            keys += [k.strip() for k in lines if k.strip() and not k.startswith("#")]
        return keys

    def payload_rates(self) -> dict[str, float]:
        """payload_log_rates as {model: rate}; ValueError naming a pair that is not NAME=RATE with RATE in [0, 1]."""
        rates = {}
        for pair in filter(None, (p.strip() for p in self.payload_log_rates.split(","))):
            name, _, rate = pair.partition("=")
            try:
                rates[name.strip()] = value = float(rate)
            except ValueError:
                value = -1.0
            if not name.strip() or not 0 <= value <= 1:
                raise ValueError(f"payload_log_rates: {pair!r} is not NAME=RATE with a rate from 0 to 1")
        return rates

    def origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def to_env(self) -> dict[str, str]:
        """These settings as RNNSERVE_* variables, for worker processes that build their own."""
        env = {}
        for name, value in self.model_dump().items():
            if value is not None:
                env[f"RNNSERVE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env
