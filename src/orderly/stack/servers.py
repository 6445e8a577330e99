"""The eight servers of the local stack, each bound to 127.0.0.1 on the ports from the settings."""

from __future__ import annotations

import base64
import signal
import subprocess
import uuid
from pathlib import Path

from orderly.stack.base import Server, accepts_tcp, http_ok

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for ".s.PGSQL.NNNNN"


class Postgres(Server):
    name = "postgres"
    package = "postgresql-15"
    binaries = (str(PG_BIN / "postgres"), str(PG_BIN / "initdb"), "pg_isready")
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint, exit

    @property
    def ports(self) -> dict[str, int]:
        return {"sql": self.settings.postgres.port}

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def log_path(self) -> Path:
        return self.console_path  # postgres logs to stderr

    def own_pid_file(self) -> Path:
        return self.data / "postmaster.pid"

    def prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        done = self.run_as_user(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self.settings.postgres.user, "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8"]
        )  # fmt: skip
        if done.returncode != 0:
            raise self.fail(
                "initdb failed",
                "read the log; `orderly stack reset` wipes a half-made cluster",
                output=done.stdout + done.stderr,
            )

    def command(self) -> list[str]:
        socket_dir = str(self.dir) if len(str(self.dir)) < UNIX_SOCKET_PATH_MAX else ""
        return [
            str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.main_port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={socket_dir}",
            "-c", "max_connections=400", "-c", "shared_buffers=256MB", "-c", "logging_collector=off",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        done = subprocess.run(
            [
                "pg_isready",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.main_port),
                "-U",
                self.settings.postgres.user,
            ],
            check=False,
        )
        return done.returncode == 0


class MariaDB(Server):
    name = "mariadb"
    package = "mariadb-server"
    binaries = ("mariadbd", "mariadb-install-db", "mariadb-admin")

    @property
    def ports(self) -> dict[str, int]:
        return {"sql": self.settings.mysql.port}

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def own_pid_file(self) -> Path:
        return self.dir / "mariadbd.pid"

    def prepare(self) -> None:
        if (self.data / "mysql").is_dir():
            return
        done = self.run_as_user(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}",
             "--auth-root-authentication-method=normal", "--skip-test-db"]
        )  # fmt: skip
        if done.returncode != 0:
            raise self.fail(
                "mariadb-install-db failed",
                "read the log; `orderly stack reset` wipes a half-made datadir",
                output=done.stdout + done.stderr,
            )

    def command(self) -> list[str]:
        return [
            "mariadbd", "--no-defaults", f"--datadir={self.data}", f"--socket={self.dir / 'mysqld.sock'}",
            f"--pid-file={self.own_pid_file()}", f"--port={self.main_port}", "--bind-address=127.0.0.1",
            f"--log-error={self.log_path}", "--skip-name-resolve", "--max-connections=500",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
            "--innodb-buffer-pool-size=256M", "--transaction-isolation=READ-COMMITTED",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        done = subprocess.run(
            ["mariadb-admin", "--no-defaults", "--protocol=TCP", "-h127.0.0.1", f"-P{self.main_port}", "-uroot",
             "--connect-timeout=1", "ping"],
            capture_output=True, check=False,
        )  # fmt: skip
        return done.returncode == 0


REDIS_MAXMEMORY = "256mb"
REDIS_MAXMEMORY_POLICY = "volatile-lru"


class Redis(Server):
    name = "redis"
    package = "redis-server"
    binaries = ("redis-server", "redis-cli")

    @property
    def ports(self) -> dict[str, int]:
        return {"resp": self.settings.redis.port}

    def own_pid_file(self) -> Path:
        return self.dir / "redis-server.pid"

    def command(self) -> list[str]:
        # No persistence: the stack's Redis keeps nothing on disk (the docs say which promises depend on that).
        # A memory cap whose policy evicts only keys that carry a TTL (volatile-lru): cached pages and answers, and
        # in-progress marks, whose loss costs speed, never correctness. Keys without a TTL (the items cache's
        # generation counter) are never evicted; with nothing volatile left, writes fail like a Redis outage.
        return [
            "redis-server", "--port", str(self.main_port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--pidfile", str(self.own_pid_file()), "--logfile", str(self.log_path), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--maxclients", "2000",
            "--maxmemory", REDIS_MAXMEMORY, "--maxmemory-policy", REDIS_MAXMEMORY_POLICY,
        ]  # fmt: skip

    def is_ready(self) -> bool:
        done = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.main_port), "ping"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return done.stdout.strip() == "PONG"


class Nats(Server):
    name = "nats"
    package = "nats-server"
    binaries = ("nats-server",)

    @property
    def ports(self) -> dict[str, int]:
        return {"client": self.settings.nats.port, "monitor": self.settings.nats.monitor_port}

    def own_pid_file(self) -> Path:
        return self.dir / "nats-server.pid"

    def command(self) -> list[str]:
        return [
            "nats-server", "-a", "127.0.0.1", "-p", str(self.main_port), "-m", str(self.ports["monitor"]),
            "-js", "-sd", str(self.dir / "jetstream"), "-P", str(self.own_pid_file()), "-l", str(self.log_path),
        ]  # fmt: skip

    def is_ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.ports['monitor']}/healthz?js-enabled-only=true")


class ClickHouse(Server):
    name = "clickhouse"
    package = "clickhouse-server"
    binaries = ("clickhouse-server",)

    @property
    def ports(self) -> dict[str, int]:
        return {"native": self.settings.clickhouse.port, "http": self.settings.clickhouse.http_port}

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "clickhouse-server.log"

    def prepare(self) -> None:
        folders = ("data", "scratch", "user_files", "format_schemas", "log")
        self.mkdir(*(self.dir / sub for sub in folders))
        d = self.dir
        (d / "config.xml").write_text(f"""<?xml version="1.0"?>
<yandex>
    <logger><level>information</level><log>{d}/log/clickhouse-server.log</log>
        <errorlog>{d}/log/clickhouse-server.err.log</errorlog><size>100M</size><count>2</count></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{self.ports["http"]}</http_port>
    <tcp_port>{self.main_port}</tcp_port>
    <max_connections>200</max_connections>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{d}/data/</path>
    <tmp_path>{d}/scratch/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
</yandex>
""")
        (d / "users.xml").write_text("""<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
""")

    def command(self) -> list[str]:
        return ["clickhouse-server", f"--config-file={self.dir / 'config.xml'}"]

    def is_ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.ports['http']}/ping")


class RabbitMQ(Server):
    name = "rabbitmq"
    package = "rabbitmq-server"
    binaries = (str(RABBITMQ_BIN / "rabbitmq-server"), "epmd")
    ready_timeout = 120.0

    @property
    def ports(self) -> dict[str, int]:
        cfg = self.settings.rabbitmq
        return {
            "amqp": cfg.port,
            "management": cfg.management_port,
            "distribution": cfg.distribution_port,
            "epmd": cfg.epmd_port,
            "stomp": cfg.stomp_port,
        }

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "orderly@localhost.log"

    def own_pid_file(self) -> Path:
        return self.dir / "rabbitmq-beam.pid"

    def environment(self) -> dict[str, str]:
        d, p = self.dir, self.ports
        ctl = p["distribution"] + 1
        return {
            "HOME": str(d),  # the Erlang cookie lives here
            "RABBITMQ_NODENAME": "orderly@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(p["amqp"]),
            "RABBITMQ_DIST_PORT": str(p["distribution"]),
            "RABBITMQ_CTL_DIST_PORT_MIN": str(ctl),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(ctl + 10),
            "ERL_EPMD_PORT": str(p["epmd"]),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(self.own_pid_file()),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "PATH": f"{RABBITMQ_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        }

    def prepare(self) -> None:
        self.mkdir(self.dir / "mnesia", self.dir / "log")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.ports['management']}\n"
            f"stomp.listeners.tcp.1 = 127.0.0.1:{self.ports['stomp']}\n"
            "log.console = false\nlog.file.level = info\n"
        )
        # STOMP: clients may write into ingest's queue directly (docs/ingest.md, "STOMP").
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_stomp].\n")

    def command(self) -> list[str]:
        return [str(RABBITMQ_BIN / "rabbitmq-server")]

    def is_ready(self) -> bool:
        cfg = self.settings.rabbitmq
        return (
            accepts_tcp(cfg.port)
            and accepts_tcp(cfg.stomp_port)
            and http_ok(
                f"http://127.0.0.1:{cfg.management_port}/api/overview",
                auth=(cfg.user, cfg.password.get_secret_value()),
            )
        )

    def after_stop(self) -> None:
        # epmd outlives the node it served; stop it too, or its port stays taken.
        epmd = self.ports["epmd"]
        if accepts_tcp(epmd):
            self.run_as_user(["epmd", "-port", str(epmd), "-kill"])


def new_cluster_id() -> str:
    """A random Kafka cluster id (22 URL-safe base64 characters) that does not start with "-".

    One random id in 64 would, and StorageTool's argument parser then reads it as an option and refuses to format
    (Kafka's own Uuid.randomUuid skips such ids for the same reason).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class Kafka(Server):
    """Apache Kafka in KRaft mode, one node acting as broker and controller, jars from Maven Central."""

    name = "kafka"
    package = "maven"
    binaries = ("java",)
    ready_timeout = 120.0

    @property
    def ports(self) -> dict[str, int]:
        return {"broker": self.settings.kafka.port, "controller": self.settings.kafka.controller_port}

    @property
    def log_path(self) -> Path:
        return self.dir / "logs" / "server.log"

    @property
    def libs(self) -> Path:
        return self.ctx.root / "lib" / "kafka"

    def jars(self) -> list[Path]:
        return sorted(self.libs.glob("*.jar"))

    def version(self) -> str:
        for jar in self.jars():
            if jar.name.startswith("kafka_2.13-"):
                return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
        return "not installed"

    def check_binaries(self) -> None:
        super().check_binaries()
        if self.version() == "not installed":
            raise self.fail(f"no Kafka jars in {self.libs}", "run `make setup` (resolves them from Maven Central)")

    def java(self, main: str, *args: str) -> list[str]:
        heap = self.ctx.kafka_heap_mb
        return [
            "java", f"-Xms{min(heap, 256)}m", f"-Xmx{heap}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.dir / 'logs'}", "-cp", f"{self.libs}/*", main, *args,
        ]  # fmt: skip

    def prepare(self) -> None:
        data, props = self.dir / "data", self.dir / "server.properties"
        self.mkdir(self.dir / "logs")
        broker, controller = self.ports["broker"], self.ports["controller"]
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}",
                    f"listeners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
                    "inter.broker.listener.name=PLAINTEXT",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        (self.dir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.file.type = File\nappender.file.name = FILE\n"
            f"appender.file.fileName = {self.dir / 'logs' / 'server.log'}\n"
            "appender.file.layout.type = PatternLayout\nappender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.file.ref = FILE\n"
        )
        if not (data / "meta.properties").exists():
            cluster_id = new_cluster_id()
            done = self.run_as_user(
                self.java("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(props))
            )
            if done.returncode != 0:
                raise self.fail(
                    "storage format failed",
                    "read the log; `orderly stack reset` wipes the data",
                    output=done.stdout + done.stderr,
                )
        self.chown(self.dir / "server.properties")

    def command(self) -> list[str]:
        return self.java("kafka.Kafka", str(self.dir / "server.properties"))

    def is_ready(self) -> bool:
        if not accepts_tcp(self.main_port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.settings.kafka.bootstrap_servers, "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)


class Prometheus(Server):
    """Prometheus, scraping every process of `orderly up` and evaluating orderly's alert rules."""

    name = "prometheus"
    package = "prometheus"
    binaries = ("prometheus",)

    @property
    def ports(self) -> dict[str, int]:
        return {"http": self.settings.prometheus.port}

    @property
    def log_path(self) -> Path:
        return self.console_path  # prometheus logs to stderr

    @property
    def config_path(self) -> Path:
        return self.dir / "prometheus.yml"

    def prepare(self) -> None:
        """Write the rules and a scrape configuration for the processes `orderly up` runs now (offset included)."""
        import json

        from orderly.runner import service_processes
        from orderly.stack.scrape import RULES_FILE, rules_text, scrape_config

        self.mkdir(self.dir / "data")
        rules = self.dir / RULES_FILE
        rules.write_text(rules_text())
        # JSON is YAML: no YAML writer needed for a generated file.
        config = scrape_config(service_processes(), rules=str(rules))
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        for path in (rules, self.config_path):
            self.chown(path)

    def command(self) -> list[str]:
        return [
            "prometheus", f"--config.file={self.config_path}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.main_port}", "--storage.tsdb.retention.time=7d",
            "--web.enable-lifecycle",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.main_port}/-/ready")


ALL_SERVERS: tuple[type[Server], ...] = (Postgres, MariaDB, Redis, Nats, ClickHouse, RabbitMQ, Kafka, Prometheus)
