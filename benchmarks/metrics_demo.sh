#!/usr/bin/env bash
# Demonstration of the metrics paths (docs/metrics.md): a local Ray head with a metrics export port,
# a `stream-monitor run` submitted to it as a Ray Job (it joins that cluster), a `bench --no-ray
# --metrics-port`, and Prometheus (the Debian package, on 127.0.0.1) scraping both; then the series
# and labels Prometheus holds. Everything binds to 127.0.0.1 and lives under $DEMO.
#
#   bash benchmarks/metrics_demo.sh [OUT_FILE]     # prints, and writes OUT_FILE as it goes
#
# Run from the repository root. PYTHONPATH is the checkout, for the driver here and, through the
# job's runtime env, for the job's driver and every Ray worker it starts.
set -u
OUT=${1:-benchmarks/results/metrics_demo.txt}
REPO=$(pwd)
DEMO=${DEMO:-/tmp/stream-monitor-metrics-demo}
RAY_TMP=$DEMO/ray           # Ray's temp dir: its service-discovery file is $RAY_TMP/prom_metrics_service_discovery.json
# outside Ray's default worker port range (10002-19999) and its agents' defaults, which other Rays here may hold
GCS_PORT=${GCS_PORT:-26379} DASHBOARD_PORT=${DASHBOARD_PORT:-28265} RAY_METRICS_PORT=${RAY_METRICS_PORT:-28080}
AGENT_PORT=${AGENT_PORT:-28266} CLIENT_PORT=${CLIENT_PORT:-28001}
RUN_METRICS_PORT=${RUN_METRICS_PORT:-9464} PROM_PORT=${PROM_PORT:-9090}
export OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$REPO
# Ray 2.60's `ray start` turns token authentication on (token in ~/.ray/auth_token); its clients
# (`ray job submit`, `ray list`) send the token only in token mode.
export RAY_AUTH_MODE=token
# Ray replaces a loopback --node-ip-address by the machine's outward address unless its multi-node
# mode is off (ray/_private/ray_constants.py, ENABLE_RAY_CLUSTER): off, every socket stays on 127.0.0.1.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
rm -rf "$DEMO" && mkdir -p "$DEMO" "$(dirname "$OUT")"
: > "$OUT"
say() { echo "$@" | tee -a "$OUT"; }
show() { say "\$ $*"; eval "$@" 2>&1 | tee -a "$OUT"; say ""; }

say "# stream-monitor metrics demonstration, $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
say "# command: bash benchmarks/metrics_demo.sh $OUT"
say "# host: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); Ray $(python -c 'import ray; print(ray.__version__)'); $(prometheus --version 2>&1 | head -1)"
say ""

say "## 1. A local Ray head, loopback only, exporting Ray metrics on $RAY_METRICS_PORT"
show ray start --head --node-ip-address 127.0.0.1 --port $GCS_PORT --metrics-export-port $RAY_METRICS_PORT \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port $DASHBOARD_PORT --num-cpus 2 \
    --dashboard-agent-listen-port $AGENT_PORT --ray-client-server-port $CLIENT_PORT --temp-dir "$RAY_TMP" --disable-usage-stats

for _ in $(seq 30); do  # the head lists its metrics agent once the agent is up
    grep -q ":$RAY_METRICS_PORT" "$RAY_TMP/prom_metrics_service_discovery.json" 2>/dev/null && break; sleep 2
done
show cat "$RAY_TMP/prom_metrics_service_discovery.json"

say "## 2. Prometheus: the shipped config, with the service-discovery file of this demo's Ray temp dir"
sed "s#/tmp/ray/prom_metrics_service_discovery.json#$RAY_TMP/prom_metrics_service_discovery.json#; s#127.0.0.1:9464#127.0.0.1:$RUN_METRICS_PORT#" \
    configs/prometheus/prometheus.yml > "$DEMO/prometheus.yml"
prometheus --config.file="$DEMO/prometheus.yml" --web.listen-address=127.0.0.1:$PROM_PORT \
    --storage.tsdb.path="$DEMO/prometheus-data" > "$DEMO/prometheus.log" 2>&1 &
PROM_PID=$!
say "prometheus --config.file=$DEMO/prometheus.yml --web.listen-address=127.0.0.1:$PROM_PORT (pid $PROM_PID)"
say ""

say "## 3. A run submitted as a Ray Job: it joins this cluster (RAY_ADDRESS, set by Ray Jobs) and starts no Ray of its own"
RUNTIME_ENV="{\"env_vars\": {\"PYTHONPATH\": \"$REPO\", \"OMP_WAIT_POLICY\": \"PASSIVE\"}}"
ENTRYPOINT="python -c 'import stream_monitor, ray; print(\"code:\", stream_monitor.__file__, \"ray:\", ray.__version__)' && stream-monitor run --max-images 6000 --set dashboard.enabled=false --set probe.every=20 --set probe.size=256 --out $DEMO/runs"
say "\$ ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --submission-id metrics-demo-run --runtime-env-json '$RUNTIME_ENV' -- bash -c \"$ENTRYPOINT\""
ray job submit --address http://127.0.0.1:$DASHBOARD_PORT --submission-id metrics-demo-run \
    --runtime-env-json "$RUNTIME_ENV" -- bash -c "$ENTRYPOINT" > "$DEMO/job_submit.log" 2>&1 &
JOB_PID=$!
for _ in $(seq 60); do  # the Ray metrics of the job's driver, while it runs
    sleep 5
    if curl -s 127.0.0.1:$RAY_METRICS_PORT/metrics | grep -q '^ray_stream_monitor_images_total'; then break; fi
done
say "### The head's metrics agent while the job runs (curl 127.0.0.1:$RAY_METRICS_PORT/metrics | grep ^ray_stream_monitor)"
curl -s 127.0.0.1:$RAY_METRICS_PORT/metrics | grep '^ray_stream_monitor' | tee -a "$OUT"
say ""
say "### The run's actors live on this cluster (named <run directory>/<worker>)"
show ray list actors --address http://127.0.0.1:$DASHBOARD_PORT
for _ in $(seq 60); do  # and once the first estimates are in
    if curl -s 127.0.0.1:$RAY_METRICS_PORT/metrics | grep -q '^ray_stream_monitor_estimated_source_accuracy_ratio'; then break; fi
    sleep 5
done
say "### The same after the first probes"
curl -s 127.0.0.1:$RAY_METRICS_PORT/metrics | grep '^ray_stream_monitor' | tee -a "$OUT"
say ""
wait $JOB_PID
say "### ray job submit's output (the job's driver output; the summary table)"
grep -v '^\s*$' "$DEMO/job_submit.log" | grep -vE '^(progress|probe|cycle) ' | tail -40 | tee -a "$OUT"
say ""

say "## 4. A bench of two runs in this process, serving its metrics on 127.0.0.1:$RUN_METRICS_PORT"
show stream-monitor bench --no-ray --adapters source,rdumb --max-images 2000 --set probe.every=10 --set probe.size=256 --metrics-port $RUN_METRICS_PORT \
    --out "$DEMO/bench" "| tail -12" &
BENCH_PID=$!
for _ in $(seq 60); do
    sleep 5
    if curl -s 127.0.0.1:$RUN_METRICS_PORT/metrics | grep -q 'stream_monitor_images_total.*rdumb'; then break; fi
done
say "### The bench's endpoint (curl 127.0.0.1:$RUN_METRICS_PORT/metrics | grep '^stream_monitor' | grep -v _created)"
curl -s 127.0.0.1:$RUN_METRICS_PORT/metrics | grep '^stream_monitor' | grep -v _created | tee -a "$OUT"
say ""
sleep 12  # one more scrape before the bench process (and its endpoint) ends
wait $BENCH_PID

say "## 5. What Prometheus holds"
show curl -s "'127.0.0.1:$PROM_PORT/api/v1/targets'" "| python -m json.tool | grep -E '\"(job|scrapeUrl|health|lastError)\"'"
QUERY='match[]={__name__=~"(ray_)?stream_monitor_.*"}'
show curl -s -G "127.0.0.1:$PROM_PORT/api/v1/series" --data-urlencode "'$QUERY'" \
    "| python -c 'import json,sys; [print(s.pop(\"__name__\"), {k: s[k] for k in (\"job\", \"run\", \"adapter\", \"stream\", \"model\")}) for s in json.load(sys.stdin)[\"data\"]]' | sort"
for metric in ray_stream_monitor_estimated_source_accuracy_ratio stream_monitor_estimated_source_accuracy_ratio \
              ray_stream_monitor_images_total stream_monitor_images_total; do
    show curl -s -G "127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "'query=last_over_time($metric[30m])'" \
        "| python -c 'import json,sys; [print(r[\"metric\"].get(\"adapter\"), r[\"metric\"].get(\"run\"), r[\"value\"][1]) for r in json.load(sys.stdin)[\"data\"][\"result\"]]'"
done

say "## 6. Clean up"
# `ray stop` would stop every Ray of this user on the machine (it finds them by process name), and
# this machine is shared: stop this demo's head by its processes, which name its temp dir.
say "\$ kill \$(pgrep -f $RAY_TMP)   # what \`ray stop\` does, for this cluster only"
pgrep -f "$RAY_TMP" | xargs -r kill 2>/dev/null; sleep 10; pgrep -f "$RAY_TMP" | xargs -r kill -9 2>/dev/null; sleep 2
say "Ray processes of this demo left: $(pgrep -f "$RAY_TMP" | wc -l)"
kill $PROM_PID
say "prometheus stopped"
