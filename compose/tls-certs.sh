#!/usr/bin/env bash
# Makes the certificates of compose/tls.yaml (docs/deploy.md, "TLS"): a private CA, the servers'
# certificate (for the names telemeter-server, telemeter-server-0, telemeter-server-1, localhost
# and 127.0.0.1) and the Prometheus's client certificate, all signed by that CA, valid a year.
# Usage: ./tls-certs.sh [OUT_DIR]   (default: secrets/tls next to this script)
set -euo pipefail
out=${1:-$(dirname "$0")/secrets/tls}
mkdir -p "$out"
cd "$out"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"; }
key ca
openssl req -x509 -new -key ca.key -sha256 -days 365 -subj /CN=telemeter-compose-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -out ca.crt
sign() {  # name, common name, extensions
  key "$1"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 365 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm "$1.csr" "$1.ext"
}
sign server telemeter-server "basicConstraints=CA:FALSE
extendedKeyUsage=serverAuth
subjectAltName=DNS:telemeter-server,DNS:telemeter-server-0,DNS:telemeter-server-1,DNS:localhost,IP:127.0.0.1"
sign prometheus prometheus "basicConstraints=CA:FALSE
extendedKeyUsage=clientAuth"
rm -f ca.srl ca.key  # nothing else is signed with it; make a new CA to add a certificate
# Read by the servers' user (uid 10001) and the Prometheus image's (nobody).
chmod 0644 ./*.crt ./*.key
echo "$PWD"
