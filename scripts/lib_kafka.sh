# Apache Kafka for the local stack, sourced by scripts/lib.sh: Java and Maven checked, Kafka's
# jars fetched once from Maven Central into a cache outside the clone, a single-node KRaft
# broker started and stopped like Postgres, and Kafka's own CLI classes on the same classpath.
# Every function is safe to run twice.

# The broker's settings and logging config; Kafka's CLI classes run from Rust read it too.
export ORDERFLOW_KAFKA_CONFIG_DIR="$ROOT/ops/kafka"

# Major version of the java at $1 (8 for 1.8).
java_major() {
    "$1" -XshowSettings:properties -version 2>&1 |
        awk -F'= ' '/java.specification.version/ { v = $2; sub(/^1\./, "", v); split(v, p, "."); print p[1] }'
}

# A Java ≥ 17 (Kafka 4's floor): $ORDERFLOW_JAVA, $JAVA_HOME, `java` on PATH, then any JDK under
# /usr/lib/jvm; Debian's openjdk-17 when there is none. Exports ORDERFLOW_JAVA.
ensure_java() {
    local candidate
    for attempt in 1 2; do
        for candidate in "${ORDERFLOW_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
            [ -n "$candidate" ] && [ -x "$candidate" ] || continue
            if [ "$(java_major "$candidate")" -ge 17 ] 2>/dev/null; then
                export ORDERFLOW_JAVA="$candidate"
                return
            fi
        done
        [ "$attempt" = 1 ] || break
        log "no Java 17 or newer found; installing Debian's openjdk-17-jre-headless"
        as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            openjdk-17-jre-headless >/dev/null || true
    done
    die "Apache Kafka 4 needs Java 17 or newer, and none was found (tried \$ORDERFLOW_JAVA, \$JAVA_HOME, java on PATH, /usr/lib/jvm/*): install a JDK 17+ or set ORDERFLOW_JAVA to its java"
}

ensure_maven() {
    command -v mvn >/dev/null && return
    log "Maven not found; installing Debian's maven"
    as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends maven >/dev/null || true
    command -v mvn >/dev/null || die "Maven is needed once to fetch Kafka's jars from Maven Central, and none was found: install Maven 3.8+ (Debian: apt-get install maven)"
}

# True when $1 holds a complete fetch: every jar listed in SHA256SUMS, unchanged, and no other.
kafka_cache_ok() {
    local dir="$1"
    [ -s "$dir/SHA256SUMS" ] && [ -f "$dir/libs/kafka_2.13-$ORDERFLOW_KAFKA_VERSION.jar" ] || return 1
    [ "$(find "$dir/libs" -maxdepth 1 -type f | wc -l)" = "$(wc -l <"$dir/SHA256SUMS")" ] || return 1
    (cd "$dir/libs" && sha256sum --quiet --strict -c ../SHA256SUMS >/dev/null 2>&1)
}

# Every jar under $1 opens as a zip and its entries' checksums match.
jars_intact() {
    python3 - "$1" <<'PY'
import pathlib, sys, zipfile
bad = []
for jar in sorted(pathlib.Path(sys.argv[1]).rglob("*.jar")):
    try:
        with zipfile.ZipFile(jar) as z:
            if z.testzip() is not None:
                bad.append(jar.name)
    except (zipfile.BadZipFile, OSError):
        bad.append(jar.name)
if bad:
    print("damaged: " + ", ".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

# Apache Kafka's runtime classpath (ops/kafka/pom.xml) in
# $ORDERFLOW_CACHE/kafka/<version>-<pom hash>/libs, fetched on the first run with the pom's pinned
# maven-dependency-plugin, checked on every run; a damaged or half-written cache is fetched again.
# Exports ORDERFLOW_KAFKA_VERSION, ORDERFLOW_KAFKA_LIBS and ORDERFLOW_JAVA.
ensure_kafka() {
    ensure_java
    local pom="$ORDERFLOW_KAFKA_CONFIG_DIR/pom.xml" dir hash tries
    ORDERFLOW_KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
    [ -n "$ORDERFLOW_KAFKA_VERSION" ] || die "no <kafka.version> in $pom"
    hash="$(sha256sum "$pom" | cut -c1-12)"
    dir="$ORDERFLOW_CACHE/kafka/$ORDERFLOW_KAFKA_VERSION-$hash"
    export ORDERFLOW_KAFKA_VERSION ORDERFLOW_KAFKA_LIBS="$dir/libs"
    kafka_cache_ok "$dir" && return
    [ -d "$dir" ] && log "the Kafka cache in $dir is incomplete or damaged; fetching it again"
    ensure_maven
    for tries in 1 2; do
        log "fetching Apache Kafka $ORDERFLOW_KAFKA_VERSION's jars from Maven Central into $dir (first run only)"
        rm -rf "$dir" "$dir.partial"
        mkdir -p "$dir.partial"
        if ! mvn -B -q -C -f "$pom" -Dmaven.repo.local="$ORDERFLOW_CACHE/m2" \
            dependency:copy-dependencies -DoutputDirectory="$dir.partial/libs" >"$dir.partial/mvn.log" 2>&1; then
            tail -30 "$dir.partial/mvn.log" >&2
            die "Maven could not fetch Kafka's jars (log: $dir.partial/mvn.log); is Maven Central reachable?"
        fi
        if jars_intact "$dir.partial/libs"; then
            (cd "$dir.partial/libs" && sha256sum -- *.jar) >"$dir.partial/SHA256SUMS"
            mv "$dir.partial" "$dir"
            kafka_cache_ok "$dir" && return
        fi
        # A jar damaged in Maven's own cache is copied again as it is: fetch everything anew.
        log "damaged jars in Maven's cache $ORDERFLOW_CACHE/m2; clearing it"
        rm -rf "$ORDERFLOW_CACHE/m2"
    done
    die "Kafka's jars stay damaged after a fresh fetch (see $dir.partial)"
}

# True when $1 holds a complete Connect fetch: every jar under libs/ and plugins/ listed in
# SHA256SUMS (paths relative to $1), unchanged, and no other.
connect_cache_ok() {
    local dir="$1"
    [ -s "$dir/SHA256SUMS" ] && [ -d "$dir/libs" ] && [ -d "$dir/plugins" ] || return 1
    [ "$(cd "$dir" && find libs plugins -type f -name '*.jar' | wc -l)" = "$(wc -l <"$dir/SHA256SUMS")" ] || return 1
    (cd "$dir" && sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1)
}

# Kafka Connect (a standalone worker's classpath) and Debezium's Postgres connector plugin
# (connect/pom.xml) in $ORDERFLOW_CACHE/connect/<Debezium version>-<pom hash>/{libs,plugins},
# fetched from Maven Central on first use, checked on every run; a damaged or half-written
# cache is fetched again. Exports ORDERFLOW_CONNECT_LIBS, ORDERFLOW_CONNECT_PLUGINS and
# ORDERFLOW_CONNECT_CONNECTOR (connect/outbox-connector.json).
ensure_connect() {
    ensure_java
    local pom="$ROOT/connect/pom.xml" dir version hash tries
    version="$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$pom")"
    [ -n "$version" ] || die "no <debezium.version> in $pom"
    hash="$(sha256sum "$pom" | cut -c1-12)"
    dir="$ORDERFLOW_CACHE/connect/$version-$hash"
    export ORDERFLOW_CONNECT_LIBS="$dir/libs" ORDERFLOW_CONNECT_PLUGINS="$dir/plugins"
    export ORDERFLOW_CONNECT_CONNECTOR="$ROOT/connect/outbox-connector.json"
    connect_cache_ok "$dir" && return
    [ -d "$dir" ] && log "the Kafka Connect cache in $dir is incomplete or damaged; fetching it again"
    ensure_maven
    for tries in 1 2; do
        log "fetching Kafka Connect and Debezium $version from Maven Central into $dir (first run only)"
        rm -rf "$dir" "$dir.partial"
        mkdir -p "$dir.partial"
        if ! { mvn -B -q -C -f "$pom" -Dmaven.repo.local="$ORDERFLOW_CACHE/m2" \
                dependency:copy-dependencies -DoutputDirectory="$dir.partial/libs" &&
            mvn -B -q -C -f "$pom" -Dmaven.repo.local="$ORDERFLOW_CACHE/m2" \
                dependency:unpack -DoutputDirectory="$dir.partial/plugins"; } >"$dir.partial/mvn.log" 2>&1; then
            tail -30 "$dir.partial/mvn.log" >&2
            die "Maven could not fetch Kafka Connect or Debezium (log: $dir.partial/mvn.log); is Maven Central reachable?"
        fi
        if jars_intact "$dir.partial"; then
            (cd "$dir.partial" && find libs plugins -type f -name '*.jar' -print0 | sort -z | xargs -0 sha256sum) >"$dir.partial/SHA256SUMS"
            mv "$dir.partial" "$dir"
            connect_cache_ok "$dir" && return
        fi
        log "damaged jars in Maven's cache $ORDERFLOW_CACHE/m2; clearing it"
        rm -rf "$ORDERFLOW_CACHE/m2"
    done
    die "Kafka Connect's jars stay damaged after a fresh fetch (see $dir.partial)"
}

# kafka_java [JVM options…] CLASS [ARGS…]: a class from Kafka's classpath, logging to stderr.
kafka_java() {
    # shellcheck disable=SC2086 # the heap options are words
    "$ORDERFLOW_JAVA" ${ORDERFLOW_KAFKA_HEAP:--Xms64m -Xmx512m} \
        -Dlog4j2.configurationFile="$ORDERFLOW_KAFKA_CONFIG_DIR/log4j2.properties" -cp "$ORDERFLOW_KAFKA_LIBS/*" "$@"
}

# Exit 0 when the broker at $1 answers a metadata request naming at least one broker.
kafka_ready() {
    "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-healthcheck" "kafka://$1" >/dev/null 2>&1
}

# The local single-node KRaft broker on 127.0.0.1:$ORDERFLOW_KAFKA_PORT (controller on
# $ORDERFLOW_KAFKA_CONTROLLER_PORT), data and settings in $ORDERFLOW_STATE_DIR/kafka, log in
# $ORDERFLOW_STATE_DIR/run/kafka.log. A Kafka already answering there is reused; a port held by
# something else is reported, never clobbered. Returns once it answers a metadata request.
# Needs the workspace built (orderflow-healthcheck is the probe). Exports ORDERFLOW_KAFKA_BOOTSTRAP.
ensure_broker() {
    export ORDERFLOW_KAFKA_BOOTSTRAP="127.0.0.1:$ORDERFLOW_KAFKA_PORT"
    local dir="$ORDERFLOW_STATE_DIR/kafka"
    [ -x "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-healthcheck" ] || die "build the workspace before starting Kafka (its readiness probe is orderflow-healthcheck)"
    if port_open "$ORDERFLOW_KAFKA_PORT"; then
        kafka_ready "$ORDERFLOW_KAFKA_BOOTSTRAP" ||
            die "port $ORDERFLOW_KAFKA_PORT is taken by something that does not answer as Kafka; set ORDERFLOW_KAFKA_PORT"
        log "reusing Kafka on $ORDERFLOW_KAFKA_BOOTSTRAP"
        return
    fi
    port_open "$ORDERFLOW_KAFKA_CONTROLLER_PORT" &&
        die "port $ORDERFLOW_KAFKA_CONTROLLER_PORT (Kafka's controller) is taken; set ORDERFLOW_KAFKA_CONTROLLER_PORT"
    mkdir -p "$dir"
    {
        cat "$ORDERFLOW_KAFKA_CONFIG_DIR/server.properties"
        printf '\n# This broker: where it listens and stores (scripts/lib_kafka.sh).\n'
        printf 'node.id=1\nlisteners=PLAINTEXT://127.0.0.1:%s,CONTROLLER://127.0.0.1:%s\n' "$ORDERFLOW_KAFKA_PORT" "$ORDERFLOW_KAFKA_CONTROLLER_PORT"
        printf 'advertised.listeners=PLAINTEXT://127.0.0.1:%s\ncontroller.quorum.voters=1@127.0.0.1:%s\nlog.dirs=%s\n' \
            "$ORDERFLOW_KAFKA_PORT" "$ORDERFLOW_KAFKA_CONTROLLER_PORT" "$dir/data"
    } >"$dir/server.properties"
    if [ ! -s "$dir/data/meta.properties" ]; then
        log "formatting Kafka's log directory $dir/data"
        kafka_java kafka.tools.StorageTool format -t "$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null)" \
            -c "$dir/server.properties" >"$dir/format.log" 2>&1 || { tail -20 "$dir/format.log" >&2; die "formatting Kafka's storage failed"; }
    fi
    # Every partition holds a few files open; the default 1024 runs out under the test suite.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    # shellcheck disable=SC2086 # the heap options are words
    launch kafka "$ORDERFLOW_JAVA" ${ORDERFLOW_KAFKA_BROKER_HEAP:--Xms256m -Xmx1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -Dlog4j2.configurationFile="$ORDERFLOW_KAFKA_CONFIG_DIR/log4j2.properties" -cp "$ORDERFLOW_KAFKA_LIBS/*" \
        kafka.Kafka "$dir/server.properties"
    local pid="${STARTED_PIDS[-1]}" i
    for ((i = 0; i < 600; i++)); do
        kafka_ready "$ORDERFLOW_KAFKA_BOOTSTRAP" && { log "Kafka $ORDERFLOW_KAFKA_VERSION is up on $ORDERFLOW_KAFKA_BOOTSTRAP"; return; }
        kill -0 "$pid" 2>/dev/null || { tail -30 "$ORDERFLOW_STATE_DIR/run/kafka.log" >&2; die "Kafka exited at start"; }
        sleep 0.2
    done
    tail -30 "$ORDERFLOW_STATE_DIR/run/kafka.log" >&2
    die "Kafka did not answer on $ORDERFLOW_KAFKA_BOOTSTRAP within 120 s"
}
