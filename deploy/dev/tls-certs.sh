#!/usr/bin/env bash
# Makes a local CA and a server certificate for 127.0.0.1 and localhost in
# DIR, for nginx to terminate client TLS with (`stack.sh` for every profile,
# and the end-to-end tests):
#
#   DIR/ca.pem       the CA certificate clients trust (`chat --ca`, `openssl s_client -CAfile`)
#   DIR/ca.key       its key (owner only)
#   DIR/server.pem   the server certificate, SAN IP:127.0.0.1 and DNS:localhost
#   DIR/server.key   its key (owner only)
#
# Existing files are kept while they verify and stay valid for another day;
# anything missing, expiring or not matching is made anew (CA included, so
# clients must take the new ca.pem). Needs Debian's `openssl`.
#
#   tls-certs.sh DIR
set -euo pipefail

dir="${1:?usage: tls-certs.sh DIR}"

valid() {
    local f
    for f in ca.pem ca.key server.pem server.key; do [ -s "$dir/$f" ] || return 1; done
    openssl x509 -checkend 86400 -noout -in "$dir/ca.pem" >/dev/null 2>&1 || return 1
    openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1 || return 1
    openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" >/dev/null 2>&1 || return 1
    # The key is the certificate's.
    [ "$(openssl x509 -noout -pubkey -in "$dir/server.pem" 2>/dev/null)" = \
        "$(openssl pkey -pubout -in "$dir/server.key" 2>/dev/null)" ]
}

valid && exit 0

mkdir -p "$dir"
chmod 700 "$dir"
tmp="$(mktemp -d "$dir/.new.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# Keys are written readable by the owner only.
umask 077
# ECDSA P-256: cheap handshakes, and every TLS 1.2/1.3 client takes it.
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
# A name of its own per CA: a client that trusts another clusterchat CA is
# told "unknown issuer", not "bad signature".
openssl req -x509 -new "${ec[@]}" -days 825 -subj "/CN=clusterchat local CA $(openssl rand -hex 4)" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new "${ec[@]}" -subj "/CN=localhost" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
cat >"$tmp/server.ext" <<'EOF'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
EOF
# 397 days: the longest validity clients accept for a server certificate.
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 397 -extfile "$tmp/server.ext" \
    -out "$tmp/server.pem" 2>/dev/null
chmod 644 "$tmp/ca.pem" "$tmp/server.pem"
mv -f "$tmp/ca.key" "$tmp/ca.pem" "$tmp/server.key" "$tmp/server.pem" "$dir/"
valid || { echo "tls-certs.sh: the new certificates in $dir do not verify" >&2; exit 1; }
