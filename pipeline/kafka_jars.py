"""Apache Kafka broker jars from Maven Central, resolved once with ``mvn`` and cached by version."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from schemas.errors import ConfigError

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.2.0"
# Kafka 4.2 logs through SLF4J 1.7 and ships log4j2 2.25.3 at runtime scope; the SLF4J
# binding is not transitive, so it is added here to match.
LOG4J_VERSION = "2.25.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>drivestream</groupId><artifactId>kafka-broker-jars</artifactId>
  <version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def cache_root() -> Path:
    """Where drivestream keeps downloaded jars (``DRIVESTREAM_CACHE``, else ~/.cache)."""
    base = os.environ.get("DRIVESTREAM_CACHE") or Path.home() / ".cache" / "drivestream"
    return Path(base)


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / "kafka" / version / "libs"


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """Return the directory of the broker's jars, resolving them with Maven if not cached."""
    target = jars_dir(version)
    if (target / ".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConfigError(
            "Maven (mvn) is needed once to fetch the Kafka broker jars: install Maven 3.8+ "
            "or set DRIVESTREAM_BOOTSTRAP to an existing broker"
        )
    log.info("resolving Apache Kafka %s jars from Maven Central into %s", version, target)
    staging = target.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
        cmd = [
            mvn,
            "-B",
            "-q",
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ConfigError(f"mvn could not resolve Kafka {version} jars:\n{tail}")
    if not any(staging.glob("kafka_2.13-*.jar")):
        raise ConfigError(f"mvn finished but no kafka_2.13 jar is in {staging}")
    (staging / ".complete").write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
