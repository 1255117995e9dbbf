#!/usr/bin/env bash
# What a Redis command costs inside a Lua script, against the same commands
# sent plainly (issue 21: the premise of docs/design/one-write-per-message.md).
#
#   bench/redis-calls.sh [requests]      (`just bench-redis-calls`, 200,000 by default)
#
# Starts a private redis-server on 127.0.0.1:6495 (append-only file
# `everysec`, as the stacks run it; state in a temporary folder), runs each
# variant with redis-benchmark (20 clients, 16 commands pipelined), and
# prints per variant the Redis CPU (user + system, from /proc) per
# operation, which includes reading requests, writing replies and the
# append-only file, and what INFO commandstats counted inside the commands
# (for a script: the script, which holds what ran inside it). Then stops
# it. Lists, counters and channels are distinct keys (`__rand_int__` over
# 100,000), so lists stay short; streams are one (as a history partition). Needs redis-server and redis-benchmark (Debian: redis-server,
# redis-tools); installs them when missing.
set -euo pipefail

requests="${1:-200000}"
port=6495
root="$(cd "$(dirname "$0")/.." && pwd)"
scripts="$root/services/gateway/src/redis/scripts"

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
fi

dir="$(mktemp -d)"
cli() { redis-cli -p "$port" "$@"; }
cleanup() {
    cli shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync everysec --daemonize yes --logfile "$dir/redis.log" \
    --pidfile "$dir/redis.pid"
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
pid="$(cat "$dir/redis.pid")"

# Redis CPU in microseconds so far (utime + stime of the process).
cpu_us() {
    local ticks
    ticks="$(awk '{print $14 + $15}' "/proc/$pid/stat")"
    echo $((ticks * 1000000 / $(getconf CLK_TCK)))
}

text="$(head -c 100 /dev/zero | tr '\0' x)"
tail="m0123456789abcdef 42 1796581378000000 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
{\"msgid\":5,\"id\":42,\"name\":\"alice\",\"to\":43,\"msg\":\"$text\",\"time\":\"2026-12-06 18:00:00\"}"

# run NAME MESSAGES_PER_REQUEST redis-benchmark-args...: one row, per
# message (the requests divided among the messages: the same number of
# messages in every row).
run() {
    local name="$1" per="$2"; shift 2
    cli config resetstat >/dev/null
    local before after inside
    local reqs=$((requests / per))
    before="$(cpu_us)"
    redis-benchmark -p "$port" -n "$reqs" -c 20 -P 16 -r 100000 -q "$@" >/dev/null
    after="$(cpu_us)"
    # A script's own count holds what ran inside it: only it, then.
    inside="$(cli info commandstats | awk -F'[=,]' '
        /^cmdstat_evalsha:/ {e = $4} /^cmdstat_/ && !/config/ {s += $4}
        END {print (e != "" ? e : s)}')"
    awk -v n="$name" -v c="$((after - before))" -v i="$inside" -v r="$((reqs * per))" \
        'BEGIN { printf "| %s | %.2f | %.2f |\n", n, c / r, i / r }'
}

load() { cli script load "$1"; }
incr_rpush_spublish="local n = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], n .. ' ' .. ARGV[1])
return redis.call('SPUBLISH', KEYS[3], ARGV[1])"
xadd_spublish="local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', '10000', '*', 'e', ARGV[1])
return redis.call('SPUBLISH', KEYS[2], ARGV[1])"
empty="$(load 'return 1')"
lua3="$(load "$incr_rpush_spublish")"
lua2="$(load "$xadd_spublish")"
append="$(load "$(cat "$scripts/counter.lua" "$scripts/append.lua" "$scripts/append_each.lua")")"
deliver="$(load "$(cat "$scripts/counter.lua" "$scripts/number.lua" "$scripts/append.lua" "$scripts/deliver_each.lua")")"

# DELIVER's arguments for a batch of $1 chats to one receiver each, laid
# out as redis/deliver.rs lays them (no client ids: no dedup keys used).
deliver_args() {
    local batch="$1" i keys=() argv=(100000 1000000000 200000 67108864)
    local head="{\"msgid\":5,\"id\":42,\"name\":\"alice\",\"toid\":43,\"msg\":\"$text\",\"time\":\"2026-12-06 18:00:00\",\"conv\":\"d:42:43\",\"cseq\":"
    for i in $(seq "$batch"); do
        keys+=("{h:1}:c:d:42:__rand_int__" "{h:1}:m:$i" "{h:1}" "{u:__rand_int__}:n" "{u:__rand_int__}:in" "{u:__rand_int__}:m:$i")
        argv+=(1 0 0 "m0123456789abcd$i" "d:42:43" 42 1796581378000000
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            "m0123456789abcd$i 42 1796581378000000 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
" "$head" "{u:__rand_int__}")
    done
    keys+=("{h:0}:e")
    printf '%s\0' "${#keys[@]}" "${keys[@]}" "${argv[@]}"
}

echo "Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), $requests requests per row, 20 clients, 16 pipelined"
echo
echo "| per message | Redis CPU µs (process) | µs inside commands (commandstats) |"
echo "|---|---|---|"
run "a script that does nothing (EVALSHA)" 1 evalsha "$empty" 0
run "INCR, plain" 1 incr '{u:__rand_int__}:n'
run "RPUSH, plain" 1 rpush '{u:__rand_int__}:in' "$tail"
run "SPUBLISH, plain (no subscriber)" 1 spublish '{u:__rand_int__}' "$tail"
run "XADD to one stream, plain" 1 xadd '{h:1}' MAXLEN '~' 10000 '*' e "$tail"
run "INCR + RPUSH + SPUBLISH, in one script" 1 evalsha "$lua3" 3 '{u:__rand_int__}:n' '{u:__rand_int__}:in' '{u:__rand_int__}' "$tail"
run "XADD to one stream + SPUBLISH, in one script" 1 evalsha "$lua2" 2 '{h:1}' '{u:__rand_int__}' "$tail"
run "APPEND as the gateways run it, one receiver per call (epoch check: TIME, LASTSAVE, INFO, GET; INCR, RPUSH, SPUBLISH)" 1 \
    evalsha "$append" 4 '{u:__rand_int__}:n' '{u:__rand_int__}:in' '{u:__rand_int__}:m' '{u:0}:e' \
    100000 1000000000 '{u:__rand_int__}' 0 0 "$tail"
for batch in 1 12; do
    mapfile -d '' args < <(deliver_args "$batch")
    run "DELIVER as the gateways run it on one Redis, $batch chat(s) per call (number, history entry, inbox, publish)" "$batch" \
        evalsha "$deliver" "${args[@]}"
done
