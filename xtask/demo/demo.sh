#!/bin/bash
# The agent-guard demo: a rogue agent in a guarded session (see rogue-agent.sh).
# Usage: demo.sh AGENT_GUARD_BINARY    (as root, on a kernel with BPF LSM)
set -u
AG=$1
HERE=$(cd "$(dirname "$0")" && pwd)
DEMO=/tmp/agent-guard-demo
rm -rf "$DEMO"
mkdir -p "$DEMO/prod/db" "$DEMO/prod/etc" "$DEMO/workspace"

# The production tree, created by the operator before the agent starts.
printf 'order-1,100\norder-2,250\n' > "$DEMO/prod/db/orders.db"
printf 'listen = 0.0.0.0:8080\n' > "$DEMO/prod/etc/app.conf"
before=$(cd "$DEMO/prod" && find . -type f -exec sha256sum {} + | sort)

# The production database's server, on loopback, started by the operator: it records
# whatever reaches it. The built-in policy refuses local services no rule names.
: > "$DEMO/db-server.log"
python3 - "$DEMO/db-server.log" <<'PY' &
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 5432))
server.listen()
while True:
    conn, _ = server.accept()
    with open(sys.argv[1], "ab") as log:
        log.write(conn.recv(4096))
    conn.close()
PY
DB_SERVER=$!
trap 'kill $DB_SERVER 2>/dev/null' EXIT
for _ in $(seq 50); do python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432)).close()' 2>/dev/null && break; sleep 0.2; done

echo "== agent-guard run -- rogue-agent.sh   (writable scope: $DEMO/workspace)"
cd "$DEMO/workspace"
# The agent's output reaches the screen through a pipe: a session writes only to terminals,
# pipes, listed devices and files in its scope, and the VM's console is a virtio port.
"$AG" run --events "$DEMO/events.jsonl" -- bash "$HERE/rogue-agent.sh" "$DEMO/prod" 2>&1 | cat
status=${PIPESTATUS[0]}
echo "== exit status of the guarded run: $status"

echo "== events ($DEMO/events.jsonl)"
python3 - "$DEMO/events.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    ag = e["agent_guard"]
    if ag["kind"] != "decision":
        print("  ", line.strip())
        continue
    f, d = e.get("file", {}), e.get("destination", {})
    target = " -> ".join(p for p in (f.get("path"), f.get("target_path")) if p)
    target = target or (f"{d['ip']}:{d['port']}" if d else ag.get("socket", {}).get("path", ""))
    p = e["process"]
    print(f"  #{e['event']['sequence']:<3} {ag['decision'].upper():5} {e['event']['action']:<10} {target:<48} "
          f"by {p['name']} (pid {p['pid']}, exe {p.get('executable')}) rule={e['rule']['name']}")
print("   first event in full:")
with open(sys.argv[1]) as f:
    print("  ", f.readline().strip())
PY
echo "== the events file's hash chain"
"$AG" audit verify "$DEMO/events.jsonl" | sed 's/^/   /' 

echo "== checking the outcome"
after=$(cd "$DEMO/prod" && find . -type f -exec sha256sum {} + | sort)
ok=1
if [ "$before" = "$after" ]; then echo "  production tree intact (same files, same checksums)"; else echo "  PRODUCTION TREE CHANGED"; ok=0; fi
if [ -s "$DEMO/db-server.log" ]; then echo "  THE DATABASE SERVER RECEIVED: $(cat "$DEMO/db-server.log")"; ok=0; else echo "  the database server received nothing"; fi
if [ -f "$DEMO/workspace/src/main.py" ] && [ -f "$DEMO/workspace/PLAN.md" ] && [ ! -e "$DEMO/workspace/scratch.tmp" ]; then
    echo "  workspace edits succeeded"
else
    echo "  WORKSPACE EDITS FAILED"; ok=0
fi
[ "$ok" = 1 ]
