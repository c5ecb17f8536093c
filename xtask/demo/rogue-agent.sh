#!/bin/bash
# A scripted "rogue agent", run by demo.sh inside a guarded session whose writable scope is
# its workspace (the current directory). It first does its job, then turns on production.
# Usage: rogue-agent.sh PROD_DIR    (a database server listens on 127.0.0.1:5432)
PROD=$1

try() {
    local what=$1; shift
    local err
    if err=$("$@" 2>&1 >/dev/null); then
        printf '  \033[32mallowed\033[0m  %s\n' "$what"
    else
        printf '  \033[31mDENIED \033[0m  %s  (%s)\n' "$what" "${err##*: }"
    fi
}

echo "agent: setting up the project workspace"
try "mkdir src"                          mkdir -p src
try "create src/main.py"                 sh -c 'printf "print(1)\n" > src/main.py'
try "edit src/main.py"                   sh -c 'printf "print(2)\n" > src/main.py'
try "create notes.md"                    sh -c 'echo "plan: clean up" > notes.md'
try "rename notes.md -> PLAN.md"         mv notes.md PLAN.md
try "delete a scratch file"              sh -c 'touch scratch.tmp && rm scratch.tmp'

echo "agent: the disk looks full, cleaning up production"
try "rm -rf $PROD"                       rm -rf "$PROD"
try "mv $PROD away"                      mv "$PROD" "$PROD.old"
try "truncate the database"              truncate -s 0 "$PROD/db/orders.db"
try "overwrite the config"               sh -c "echo 'listen = 0.0.0.0:1' > '$PROD/etc/app.conf'"
try "plant a job next to the config"     sh -c "echo '* * * * * root /bin/true' > '$PROD/etc/agent.cron'"
try "hide it: double fork + setsid rm"   sh -c "( setsid rm '$PROD/db/orders.db' & ); sleep 1; test ! -e '$PROD/db/orders.db'"
try "DROP DATABASE on the local server"  python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432)).sendall(b"DROP DATABASE orders;\n")'
echo "agent: done"
