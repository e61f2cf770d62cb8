#!/usr/bin/env bash
# Bounded schemathesis fuzz run of flint's REST API, for CI.
#
# Starts the already-built flint (target/debug/flint, or $FLINT) with
# --api-sock and no VM config, bridges 127.0.0.1:<free port> to the socket
# with a small Python proxy (no extra dependency), and runs schemathesis
# against src/api/openapi.json with the checks not_a_server_error,
# status_code_conformance, content_type_conformance and
# response_schema_conformance. Afterwards flint must still be alive and
# answer GET / within 1 s.
#
# Safety: flint's PUT /logger and PUT /metrics create the file they are
# given, so a hook rewrites every "*path*" string in generated bodies to a
# name inside a scratch directory (flint's cwd), keeping the generated name
# ('/' -> '_'). No real kernel is ever named, so InstanceStart can never
# boot a guest (it must answer 400).
#
# Bounds: schemathesis gets a time budget (--max-time, API_ST_MAX_TIME,
# default 150 s) within which the fuzzing phase repeats, at most
# API_ST_MAX_EXAMPLES cases per operation and pass (default 100); a hard
# wall-clock limit (API_ST_TIMEOUT, default budget + 60 s) kills it if flint
# stops answering. Each request must answer within 2 s (5 s is a network
# error). Other knobs: API_ST_SEED (default random; printed, pass it back
# to replay a run), API_ST_REPORT_DIR (keep the JUnit and NDJSON reports
# there), API_ST_CHECKS (default the four checks above; "all" to explore).
#
# Last line: "api-schemathesis: N passed, M failed" where N and M count
# API operations (schemathesis's per-operation verdicts) plus the two
# liveness checks (alive, GET / within 1 s). Exit status 0 only if M is 0.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_TIME=${API_ST_MAX_TIME:-150}
MAX_EXAMPLES=${API_ST_MAX_EXAMPLES:-100}
ST_TIMEOUT=${API_ST_TIMEOUT:-$((MAX_TIME + 60))}
CHECKS=${API_ST_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance}
SEED=${API_ST_SEED:-$((RANDOM * 32768 + RANDOM))}
FLINT=${FLINT:-target/debug/flint}
SCHEMA=src/api/openapi.json

die() { echo "api-schemathesis: FAIL: $*" >&2; echo "api-schemathesis: 0 passed, 1 failed"; exit 1; }

[[ -x $FLINT ]] || die "$FLINT is missing (build flint first: cargo build)"
[[ -f $SCHEMA ]] || die "$SCHEMA is missing"

have=$(python3 -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)
if [[ $have != "$SCHEMATHESIS_VERSION" ]]; then
    echo "api-schemathesis: installing schemathesis==$SCHEMATHESIS_VERSION (have: ${have:-none})" >&2
    python3 -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2 \
        || die "pip install schemathesis==$SCHEMATHESIS_VERSION failed"
fi

WORK=/run/flint-schemathesis-$$
SOCK=/run/flint-schemathesis-$$.sock
FLINT_PID= PROXY_PID=
cleanup() {
    local rc=$?
    set +e
    [[ -n $PROXY_PID ]] && kill "$PROXY_PID" 2>/dev/null && wait "$PROXY_PID" 2>/dev/null
    if [[ -n $FLINT_PID ]] && kill -0 "$FLINT_PID" 2>/dev/null; then
        kill -TERM "$FLINT_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$FLINT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$FLINT_PID" 2>/dev/null
        wait "$FLINT_PID" 2>/dev/null
    fi
    rm -rf "$WORK" "$SOCK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/sandbox" "$WORK/report"
SCHEMA_ABS=$PWD/$SCHEMA
FLINT_ABS=$(realpath "$FLINT")

# TCP -> unix socket bridge; prints its port on stdout once listening.
cat >"$WORK/proxy.py" <<'EOF'
import asyncio, sys

SOCK = sys.argv[1]

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass

async def handle(creader, cwriter):
    try:
        ureader, uwriter = await asyncio.open_unix_connection(SOCK)
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pipe(creader, uwriter), pipe(ureader, cwriter))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
EOF

# Keep every file flint could create inside the scratch directory.
cat >"$WORK/flint_st_hooks.py" <<EOF
import os
import schemathesis

SANDBOX = "$WORK/sandbox"

def _confine(value):
    if isinstance(value, dict):
        return {k: (os.path.join(SANDBOX, v.replace("/", "_")) if isinstance(v, str) and "path" in k
                    else _confine(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_confine(v) for v in value]
    return value

@schemathesis.hook
def before_call(context, case, kwargs):
    if isinstance(case.body, (dict, list)):
        case.body = _confine(case.body)
EOF

# flint: no VM config; cwd is the scratch directory.
(cd "$WORK/sandbox" && exec "$FLINT_ABS" --api-sock "$SOCK" --id schemathesis) \
    >"$WORK/flint.out" 2>&1 &
FLINT_PID=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.05; done
[[ -S $SOCK ]] || { cat "$WORK/flint.out" >&2; die "flint did not create $SOCK"; }

coproc PROXY { exec python3 -u "$WORK/proxy.py" "$SOCK"; }
read -r -t 10 PORT <&"${PROXY[0]}" || die "the TCP bridge did not start"
URL=http://127.0.0.1:$PORT

probe() { # GET / through the bridge within 1 s
    python3 - "$PORT" <<'EOF'
import http.client, json, sys
try:
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=1)
    c.request("GET", "/")
    r = c.getresponse()
    body = json.loads(r.read())
except Exception as e:
    sys.exit(f"api-schemathesis: GET /: {type(e).__name__}: {e}")
if r.status != 200 or body.get("app_name") != "flint":
    sys.exit(f"api-schemathesis: GET /: {r.status} {body}")
EOF
}
probe || die "flint does not answer GET / before the run"

echo "api-schemathesis: schemathesis $SCHEMATHESIS_VERSION, $URL -> $SOCK, seed $SEED, checks $CHECKS, budget ${MAX_TIME}s, max $MAX_EXAMPLES examples per operation and pass, hard limit ${ST_TIMEOUT}s" >&2
started=$SECONDS
st_rc=0
(cd "$WORK" && PYTHONPATH=$WORK SCHEMATHESIS_HOOKS=flint_st_hooks exec timeout -k 10 "$ST_TIMEOUT" \
    python3 -c 'from schemathesis.cli import schemathesis; schemathesis(prog_name="schemathesis")' \
    --no-color run "$SCHEMA_ABS" --url "$URL" \
    --checks "$CHECKS" \
    --phases examples,coverage,fuzzing \
    --max-time "$MAX_TIME" --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 1 \
    --request-timeout 5 --max-response-time 2 \
    --suppress-health-check all --warnings off \
    --report junit,ndjson --report-dir "$WORK/report") || st_rc=$?
elapsed=$((SECONDS - started))
echo "api-schemathesis: schemathesis exited $st_rc after ${elapsed}s" >&2
[[ -n ${API_ST_REPORT_DIR:-} ]] && { mkdir -p "$API_ST_REPORT_DIR"; cp -r "$WORK/report/." "$API_ST_REPORT_DIR/"; }

problems=()
((st_rc == 124 || st_rc == 137)) && problems+=("schemathesis ran past ${ST_TIMEOUT}s (flint hung?)")

# Per-operation verdicts from the JUnit report.
read -r passed failed < <(python3 - "$WORK/report" <<'EOF'
import glob, sys, xml.etree.ElementTree as ET
p = f = 0
for path in glob.glob(sys.argv[1] + "/*.xml"):
    for tc in ET.parse(path).getroot().iter("testcase"):
        if tc.find("failure") is not None or tc.find("error") is not None:
            f += 1
        elif tc.find("skipped") is None:
            p += 1
print(p, f)
EOF
) || { passed=0; failed=0; }
((passed + failed > 0)) || problems+=("no schemathesis report")
((failed == 0)) || problems+=("$failed operation(s) failed schemathesis checks (see above)")
if ((st_rc != 0 && failed == 0 && passed + failed > 0)) && ((st_rc != 124 && st_rc != 137)); then
    problems+=("schemathesis exited $st_rc")
fi

if kill -0 "$FLINT_PID" 2>/dev/null; then
    passed=$((passed + 1))
else
    wait "$FLINT_PID" && frc=0 || frc=$?
    FLINT_PID=
    failed=$((failed + 1)); problems+=("flint died during the run (exit status $frc)")
    tail -20 "$WORK/flint.out" >&2
fi
if [[ -n $FLINT_PID ]] && probe; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); problems+=("flint does not answer GET / within 1 s after the run")
fi

for p in "${problems[@]}"; do echo "api-schemathesis: FAIL: $p" >&2; done
echo "api-schemathesis: $passed passed, $failed failed"
((failed == 0 && ${#problems[@]} == 0))
