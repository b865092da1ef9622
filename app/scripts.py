"""Every Lua script the server runs in Redis, each in one slot (so Redis Cluster can run it), but
`SAVE_AND_QUEUE`, which runs where its two slots are on one node, and `READ_HEADS`, which runs on
the node of the streams it reads.

Key names come from `app.keys`; times are milliseconds unless a name says otherwise.
"""

from __future__ import annotations

# One script per upload: the rate limit is checked and consumed, and the snapshot replaced,
# atomically in the cluster's slot (docs/architecture.md D2, D3, D8). Returns 0, or the
# milliseconds to wait when the cluster uploaded less than --ratelimit ago (nothing is written
# then).
SAVE_SNAPSHOT = """
local wait = redis.call('PTTL', KEYS[2])
if wait > 0 then return wait end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
return 0
"""

SAVE_SNAPSHOT_BYTES = SAVE_SNAPSHOT.encode()

# Queues an upload for remote write in its range's stream, unless the stream holds --forward-
# queue-limit entries already (then nil: back-pressure, D13). Fields: b the snappy-compressed
# WriteRequest, u its uncompressed size, t the tenant, n the series, s the samples' time (ms).
ENQUEUE = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', 'b', ARGV[2], 'u', ARGV[3], 't', ARGV[4], 'n', ARGV[5],
  's', ARGV[6])
"""

ENQUEUE_BYTES = ENQUEUE.encode()

# An upload of a server with --forward-url whose snapshot slot and range slot are on one node
# (nearly always: a range is 64 adjacent slots): the rate limit, the queue's bound, the index
# entry, the queue entry and the snapshot in one script, so one round trip and nothing to take
# back (docs/architecture.md D13). KEYS: snapshot, rate limit (the cluster's slot). The range's
# keys are ARGV[1] (index) and ARGV[2] (stream), reached as undeclared keys, which
# allow-cross-slot-keys permits on the node that serves them; the stream is read before anything
# is written, so on any other node the script fails with nothing done. ARGV[3..]: the cluster ID,
# now (ms), the snapshot, its TTL, the rate limit window, the queue limit, then the entry's
# fields as for ENQUEUE. Returns 0, the ms to wait (rate limited), or nil (the queue is full).
SAVE_AND_QUEUE = """#!lua flags=allow-cross-slot-keys
local wait = redis.call('PTTL', KEYS[2])
if wait > 0 then return wait end
if redis.call('XLEN', ARGV[2]) >= tonumber(ARGV[8]) then return false end
redis.call('ZADD', ARGV[1], ARGV[4], ARGV[3])
redis.call('XADD', ARGV[2], '*', 'b', ARGV[9], 'u', ARGV[10], 't', ARGV[11], 'n', ARGV[12],
  's', ARGV[13])
redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
if tonumber(ARGV[7]) > 0 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[7]) end
return 0
"""

SAVE_AND_QUEUE_BYTES = SAVE_AND_QUEUE.encode()

# The forwarder's read of the streams of a node's ranges in one script (D13): ARGV[1] the count,
# then the streams, every one served by the node (as undeclared keys, which allow-cross-slot-keys
# permits there; any other node fails the script, and nothing is read). Returns, for each stream
# that holds entries only, its place among the streams (from 1), then its first entries as
# XRANGE gives them: most streams are empty, and their replies would be most of the turn's.
READ_HEADS = """#!lua flags=allow-cross-slot-keys,no-writes
local out = {}
for i = 2, #ARGV do
  local entries = redis.call('XRANGE', ARGV[i], '-', '+', 'COUNT', ARGV[1])
  if #entries > 0 then
    out[#out + 1] = i - 1
    out[#out + 1] = entries
  end
end
return out
"""

READ_HEADS_BYTES = READ_HEADS.encode()

# A fixed one-minute window of received remote-write requests per cluster: 0, or the ms left in
# the window once it holds ARGV[2] requests.
COUNT_RECEIVE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then return math.max(redis.call('PTTL', KEYS[1]), 1) end
return 0
"""

COUNT_FAILURE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""
