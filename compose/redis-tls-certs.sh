#!/bin/sh
# Writes the certificates of compose.redis-tls.yaml to secrets/redis-tls/ (or the directory given):
# a CA, one certificate for the six Redis nodes (their fixed addresses, for clients, the cluster
# bus and replication) and a client certificate for the servers and redis-cli. Needs openssl.
set -eu
subnet=${TELEMETER_SUBNET:-172.30.89}
dir=${1:-secrets/redis-tls}
mkdir -p "$dir"
cd "$dir"
days=825
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 \
  -days "$days" -subj "/CN=telemeter redis CA" -keyout ca.key -out ca.crt 2>/dev/null
san="IP:127.0.0.1,DNS:localhost"
for i in 0 1 2 3 4 5; do san="$san,IP:$subnet.1$i,DNS:redis-$i"; done
sign() {  # name, subject, extensions
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 \
    -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
    -days "$days" -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm "$1.csr" "$1.ext"
}
sign redis redis "subjectAltName=$san
extendedKeyUsage=serverAuth,clientAuth"
sign client telemeter "extendedKeyUsage=clientAuth"
rm -f ca.key ca.srl
# The Redis image runs as uid 999, the servers as uid 10001: both read these files.
chmod 0644 ./*.crt ./*.key
echo "certificates written to $dir"
