#!/bin/sh
# Forms the Redis Cluster from the nodes given as arguments (host:port, IP addresses): three
# primaries with one replica each. Run by compose.yaml's one-shot job after every node answers;
# a cluster already formed is left alone, so the job succeeds on every `docker compose up`.
# redis-cli takes the password from REDISCLI_AUTH, and its TLS options from REDIS_CLI_TLS
# (compose.redis-tls.yaml).
set -eu
first=$1
host=${first%:*}
port=${first##*:}
cli() {
  # shellcheck disable=SC2086 # REDIS_CLI_TLS holds several options
  redis-cli ${REDIS_CLI_TLS:-} "$@"
}
if cli -h "$host" -p "$port" cluster info | grep -q '^cluster_state:ok'; then
  echo "redis cluster already formed"
  exit 0
fi
cli --cluster create "$@" --cluster-replicas 1 --cluster-yes
# Wait until every node agrees on the slots and the first one reports the cluster ok (a node
# reports ok a moment after the slots agree), so the servers start against a working cluster.
tries=0
until cli --cluster check "$first" >/dev/null 2>&1 \
  && cli -h "$host" -p "$port" cluster info | grep -q '^cluster_state:ok'; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "redis cluster not consistent after 60 s" >&2
    exit 1
  fi
  sleep 1
done
echo "redis cluster formed"
