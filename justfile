# clusterchat: `just up` runs the stack, `just test` runs the tests.
# Everything here delegates to deploy/dev/stack.sh, which installs what is
# missing and keeps its state under .stack/ (git-ignored).

set shell := ["bash", "-euo", "pipefail", "-c"]

# list the recipes
default:
    @just --list

# Profiles: dev (two gateway nodes on one Redis) and cluster (three gateway
# nodes on a Redis Cluster of three masters and three replicas; own ports).

# build, install what is missing, start the whole stack and wait until it is healthy (`just up cluster`)
up profile="dev":
    @deploy/dev/stack.sh up {{profile}}

# stop everything `just up` (or `just up cluster`) started
down profile="dev":
    @deploy/dev/stack.sh down {{profile}}

# show what is running (`just ps cluster`)
ps profile="dev":
    @deploy/dev/stack.sh ps {{profile}}

# a stack's internal token, for grpcurl: grpcurl -plaintext -H "authorization: Bearer $(just token)" ... (`just token cluster`)
token profile="dev":
    @deploy/dev/stack.sh token {{profile}}

# show logs: all, or one process (e.g. `just logs user-service`, `just logs cluster gateway-3`)
[positional-arguments]
logs *service:
    @deploy/dev/stack.sh logs "$@"

# fresh private MariaDB, Redis and Redis Cluster, the whole suite on Redis, the Redis-facing tests on the cluster, then stop
[positional-arguments]
test *args:
    @deploy/dev/stack.sh test "$@"

# Prometheus (http://127.0.0.1:9090) and the Redis, MariaDB and nginx exporters for `just up`, natively; with Docker also the collector, Tempo and Grafana (http://127.0.0.1:3000)
observe:
    @deploy/dev/stack.sh observe

# stop what `just observe` started
observe-down:
    @deploy/dev/stack.sh observe-down

# measure throughput, latency, loss, memory per connection and logins/s on a fresh release stack
[positional-arguments]
bench *args:
    @deploy/dev/stack.sh bench "$@"

# the same measurements on a Redis Cluster (3 masters + 3 replicas) with three gateway nodes
[positional-arguments]
bench-cluster *args:
    @deploy/dev/stack.sh bench-cluster "$@"

# what search costs the history service: ingest with and without the index (MariaDB CPU per message) and search latency over 1M messages (`just bench-search [MESSAGES] [CONVERSATIONS]`)
[positional-arguments]
bench-search *args:
    @deploy/dev/stack.sh bench-search "$@"

# what a Redis command costs inside a Lua script against the same sent plainly, on a private redis-server (issue 21's design input; `just bench-redis-calls [REQUESTS]`)
[positional-arguments]
bench-redis-calls *args:
    @bench/redis-calls.sh "$@"

# Jepsen-style chaos run, as root: the stack in network namespaces, random faults and partitions while clients chat, then the checker (`just chaos [SECONDS] [single|cluster|all] [--seed N]`; 120 s on single Redis by default)
[positional-arguments]
chaos *args:
    @deploy/dev/stack.sh chaos "$@"

# the terminal client (e.g. `just chat`, `just chat --ws ws://127.0.0.1:8080/ws`, `just chat --tls`)
[positional-arguments]
chat *args:
    @cargo run -q --release -p chat -- "$@"

# fuzz the codec (framing, classic parser, WebSocket path) on nightly, each target for SECONDS (e.g. `just fuzz 60`)
fuzz seconds="300":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    for target in framing classic websocket; do
        # libFuzzer adds what it finds to the first directory (git-ignored);
        # the committed seeds and regressions are only read.
        mkdir -p "fuzz/target/corpus/$target" "fuzz/regressions/$target"
        cargo +nightly fuzz run -O -a "$target" "fuzz/target/corpus/$target" \
            "fuzz/corpus/$target" "fuzz/regressions/$target" \
            -- -max_total_time={{seconds}} -timeout=10 -rss_limit_mb=2048
    done

# formatting and lints
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
