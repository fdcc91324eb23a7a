"""A real single-node Apache Kafka broker (KRaft) run from the Maven Central jars.

Used by ``pulse broker``, ``pulse demo`` and the integration tests::

    with KafkaBroker(port=free_port(), data_dir=tmp) as broker:
        print(broker.bootstrap)          # 127.0.0.1:<port>

Jars are fetched once with Maven into ``~/.cache/pulse/kafka/<version>`` (outside
the work tree; override with ``PULSE_KAFKA_CACHE``). Kafka 3.x logs through
reload4j, 4.x through log4j2.

With ``sasl_users={"alice": "alice-secret"}`` the client port is a
``SASL_PLAINTEXT`` listener accepting SCRAM-SHA-512 only; the users are written
into the metadata log when the storage is formatted (``StorageTool format
--add-scram``, Kafka >= 3.5, 3.9 and 4.x alike) and the broker talks to itself as
the first user. The controller listener stays PLAINTEXT on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from stream.config import Settings
from stream.core.errors import PulseError

log = logging.getLogger(__name__)


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.pulse</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
{logging}
  </dependencies>
</project>
"""
_LOGGING_3 = """    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId>
      <version>1.2.25</version></dependency>"""
_LOGGING_4 = """    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>"""
_LOG4J_3 = """log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
"""
_LOG4J_4 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = STDOUT
"""


class BrokerError(PulseError, RuntimeError):
    """The broker could not be fetched, formatted or started."""


def cache_dir(version: str, cache: str | None = None) -> Path:
    """Where the jars of ``version`` live (``PULSE_KAFKA_CACHE`` unless ``cache`` is given)."""
    return Path(cache or Settings.from_env().kafka_cache).expanduser() / version


def major(version: str) -> int:
    return int(version.split(".", 1)[0])


def ensure_jars(version: str, cache: str | None = None) -> Path:
    """Return the directory holding the broker's runtime jars, downloading them once."""
    target = cache_dir(version, cache)
    jars = target / "jars"
    marker = target / ".complete"
    if marker.exists():
        return jars
    if shutil.which("mvn") is None:
        raise BrokerError(
            "Maven (mvn) is needed once to download the Kafka jars: install it "
            "(apt-get install maven) or point PULSE_KAFKA_BOOTSTRAP at a running broker"
        )
    target.mkdir(parents=True, exist_ok=True)
    logging_deps = _LOGGING_4 if major(version) >= 4 else _LOGGING_3
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_POM.format(version=version, logging=logging_deps))
        staging = Path(tmp) / "jars"
        cmd = [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(pom),
            "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        log.info("downloading Apache Kafka %s jars with Maven into %s", version, target)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BrokerError(
                f"Maven could not fetch Kafka {version}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                " — check that Maven Central is reachable and the version exists"
            )
        if jars.exists():
            shutil.rmtree(jars)
        shutil.move(str(staging), jars)
    marker.write_text(version)
    return jars


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set_parent_death_signal() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


SCRAM_MECHANISM = "SCRAM-SHA-512"
_UNSAFE = re.compile(r'[\s,\[\]="\\]')


def check_scram_user(name: str, password: str) -> None:
    """Reject names and passwords that ``StorageTool --add-scram`` cannot carry."""
    for what, value in (("user name", name), ("password", password)):
        if not value or _UNSAFE.search(value):
            raise BrokerError(
                f"SCRAM {what} {'for ' + repr(name) if what == 'password' else repr(value)} "
                "must be non-empty without spaces, commas, brackets, '=', quotes or "
                "backslashes; choose another"
            )


def parse_sasl_user(spec: str) -> tuple[str, str]:
    """``"alice:alice-secret"`` -> ``("alice", "alice-secret")`` (for ``--sasl-user``).

    >>> parse_sasl_user("alice:s3cret:x")
    ('alice', 's3cret:x')
    """
    name, sep, password = spec.partition(":")
    if not sep:
        raise BrokerError(f"--sasl-user {name!r}: write it as NAME:PASSWORD")
    check_scram_user(name, password)
    return name, password


async def _broker_count(
    bootstrap: str, timeout_s: float = 3.0, security: Mapping[str, object] | None = None
) -> int:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **(security or {})
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return len(client.cluster.brokers())
    finally:
        await client.close()


def metadata_ready(
    bootstrap: str, timeout_s: float = 3.0, security: Mapping[str, object] | None = None
) -> bool:
    """True when the broker answers a metadata request listing at least one broker.

    ``security`` holds aiokafka client keyword arguments (``security_protocol``,
    ``sasl_mechanism``, ...) for a SASL listener.
    """
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # connection refusals are expected while it boots
    try:
        return asyncio.run(_broker_count(bootstrap, timeout_s, security)) > 0
    except Exception:
        return False
    finally:
        quiet.setLevel(level)


class KafkaBroker:
    """A single-node KRaft broker process (broker + controller roles)."""

    def __init__(
        self,
        port: int = 9092,
        data_dir: str | os.PathLike[str] | None = None,
        version: str | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        extra_config: Mapping[str, str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        self.port = port
        self.sasl_users = dict(sasl_users or {})
        for name, password in self.sasl_users.items():
            check_scram_user(name, password)
        self.controller_port = controller_port or free_port()
        settings = Settings.from_env()
        self.version = version or settings.kafka_version
        self.cache = settings.kafka_cache
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pulse-kafka-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir).resolve()
        self.heap = heap
        self.extra_config = dict(extra_config or {})
        self.log_path = Path(log_file) if log_file else self.data_dir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def security_protocol(self) -> str:
        """What clients must speak on :attr:`bootstrap`: PLAINTEXT or SASL_PLAINTEXT."""
        return "SASL_PLAINTEXT" if self.sasl_users else "PLAINTEXT"

    def client_env(self, user: str | None = None) -> dict[str, str]:
        """``PULSE_KAFKA_*`` variables for a Pulse process using this broker (as ``user``)."""
        env = {"PULSE_KAFKA_BOOTSTRAP": self.bootstrap}
        if self.sasl_users:
            name = user or next(iter(self.sasl_users))
            env.update(
                PULSE_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                PULSE_KAFKA_SASL_MECHANISM=SCRAM_MECHANISM,
                PULSE_KAFKA_USERNAME=name,
                PULSE_KAFKA_PASSWORD=self.sasl_users[name],
            )
        return env

    def client_security(self) -> dict[str, object]:
        """aiokafka keyword arguments for the readiness check (the first SCRAM user)."""
        if not self.sasl_users:
            return {}
        return Settings.from_env(self.client_env()).kafka_client_kwargs()

    def config(self) -> dict[str, str]:
        cfg = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "4",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            # accept oversized records so Pulse can route them to the DLQ itself
            "message.max.bytes": str(16 * 1024 * 1024),
            "replica.fetch.max.bytes": str(16 * 1024 * 1024),
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        if self.sasl_users:
            name, password = next(iter(self.sasl_users.items()))
            jaas = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{name}" password="{password}";'
            )
            cfg.update(
                {
                    "listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{self.port}",
                    "inter.broker.listener.name": "SASL_PLAINTEXT",
                    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,"
                    "SASL_PLAINTEXT:SASL_PLAINTEXT",
                    "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                    "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
                    "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": jaas,
                }
            )
        cfg.update(self.extra_config)
        return cfg

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
        if not java:
            raise BrokerError("Java 17 is needed to run Kafka: install openjdk-17-jre-headless")
        return str(java)

    def _prepare(self, jars: Path) -> tuple[Path, list[str]]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.touch(mode=0o600)  # may hold the broker's own SCRAM password
        props.write_text("".join(f"{k}={v}\n" for k, v in self.config().items()))
        if major(self.version) >= 4:
            log_cfg = self.data_dir / "log4j2.properties"
            log_cfg.write_text(_LOG4J_4)
            log_opt = f"-Dlog4j2.configurationFile={log_cfg}"
        else:
            log_cfg = self.data_dir / "log4j.properties"
            log_cfg.write_text(_LOG4J_3)
            log_opt = f"-Dlog4j.configuration=file:{log_cfg}"
        base = [self._java(), f"-Xmx{self.heap}", "-Xss1m", log_opt, "-cp", f"{jars}/*"]
        return props, base

    def start(self, timeout_s: float = 90.0) -> KafkaBroker:
        """Fetch jars if needed, format storage, start the JVM and wait for metadata."""
        jars = ensure_jars(self.version, self.cache)
        props, base = self._prepare(jars)
        meta = self.data_dir / "logs" / "meta.properties"
        if not meta.exists():
            scram = [
                arg
                for name, password in self.sasl_users.items()
                for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")
            ]
            fmt = subprocess.run(
                [
                    *base,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={_cluster_id()}",  # ids may start with "-"
                    "-c",
                    str(props),
                    "--ignore-formatted",
                    *scram,
                ],
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                out = f"{fmt.stdout}{fmt.stderr}"
                for password in self.sasl_users.values():
                    out = out.replace(password, "***")
                raise BrokerError(f"formatting Kafka storage failed: {out}")
        elif self.sasl_users:
            log.info("storage already formatted: SCRAM users are those it was formatted with")
        self._logf = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*base, "kafka.Kafka", str(props)],
            stdout=self._logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_set_parent_death_signal,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"Kafka exited with code {self.proc.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            if metadata_ready(self.bootstrap, timeout_s=2.0, security=self.client_security()):
                log.info("Kafka %s ready on %s", self.version, self.bootstrap)
                return self
            time.sleep(0.3)
        self.stop()
        raise BrokerError(f"Kafka did not answer metadata requests within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 30.0, keep_data: bool = False) -> None:
        """Stop the JVM (SIGTERM, then SIGKILL) and remove a temporary data dir.

        ``keep_data=True`` keeps even a temporary data dir so :meth:`start` can
        bring the same broker back (same ports, data and cluster id).
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_logf", None) is not None:
            self._logf.close()
            self._logf = None  # type: ignore[assignment]
        if self._tmp is not None and not keep_data:
            self._tmp.cleanup()
            self._tmp = None

    def restart(self, down_s: float = 0.0, timeout_s: float = 90.0) -> KafkaBroker:
        """Stop gracefully, stay down ``down_s`` seconds, start again in place.

        Same ports, data dir and cluster id: clients see an outage, not a new cluster.
        """
        self.stop(keep_data=True)
        time.sleep(down_s)
        return self.start(timeout_s)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), keeping the data dir: a broker crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
