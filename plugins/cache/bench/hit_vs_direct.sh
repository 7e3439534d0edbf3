#!/usr/bin/env bash
# Cache hit vs. direct-to-upstream vs. miss, with the demo services (examples/services.py).
#
#   plugins/cache/bench/hit_vs_direct.sh [seconds] [connections]
#
# direct: wrk -> products service (hypercorn, JSON, "Cache-Control: public, max-age=30")
# hit:    wrk -> gateway -> cache HIT (the same product)
# proxy:  wrk -> gateway without the cache -> products service
# miss:   wrk -> gateway -> cache lookup, MISS -> products service, response stored
#         (a new query string on every request, so every request misses)
set -euo pipefail
cd "$(dirname "$0")/../../.."
SECONDS_=${1:-5}
CONNS=${2:-20}
PY=.venv/bin/python
CONF=$(mktemp --suffix=.toml)
cat >"$CONF" <<'TOML'
[gateway]
listen = "127.0.0.1:18080"
[services.users]
targets = ["http://127.0.0.1:9101/users"]
[services.products]
targets = ["http://127.0.0.1:9102/products"]
[plugins.cache]
[[routes]]
name = "users"
paths = ["/api/users"]
service = "users"
strip_path = true
[[routes]]
name = "products"
paths = ["/api/products"]
service = "products"
strip_path = true
[[routes]]
name = "plain"
paths = ["/plain/products"]
service = "products"
strip_path = true
[routes.plugins]
cache = false
TOML
$PY examples/services.py >/dev/null 2>&1 & SERVICES=$!
.venv/bin/bascule run -c "$CONF" >/dev/null 2>&1 & GATEWAY=$!
LUA=$(mktemp --suffix=.lua)
cat >"$LUA" <<'EOF_LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/api/products/p1?n=" .. counter)
end
EOF_LUA
trap 'kill $SERVICES $GATEWAY 2>/dev/null; rm -f "$CONF" "$LUA"' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18080/api/products/p1 && break; sleep 0.2; done
curl -si http://127.0.0.1:18080/api/products/p1 | grep -i x-cache-status
curl -si http://127.0.0.1:18080/api/products/p1 | grep -i x-cache-status
run() {
  printf '%-7s ' "$1"
  wrk -t1 -c"$CONNS" -d"${SECONDS_}s" --latency ${3:+-s "$3"} "$2" | awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {printf "%10s req/s   p50 %s   p99 %s\n", rps, p50, p99}'
}
run direct http://127.0.0.1:9102/products/p1
run hit http://127.0.0.1:18080/api/products/p1
run proxy http://127.0.0.1:18080/plain/products/p1
run miss http://127.0.0.1:18080 "$LUA"
