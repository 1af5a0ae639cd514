#!/usr/bin/env bash
# Gemma 4 with its MTP assistant on a GPU through vLLM, served with `--speculation mtp` and then `hybrid`
# (prompt lookup where it matches, else the assistant), with `agent eval` run against each on the same cases.
#
# Needs a GPU machine with vLLM 0.32 and Retain in one environment, and the weights (in the Hugging Face cache,
# or local directories named like the models):
#   pip install 'vllm==0.32.*' && pip install -e .     # from this checkout: hybrid is Retain's vLLM plugin
#
# Usage: evals/gpu/mtp_vs_hybrid.sh [OUT_DIR] [-- extra vLLM arguments]
#   SIZE=26B-A4B (E2B, E4B, 26B-A4B, 31B) or MODEL=path/to/gemma-4-…-it (DRAFT=its assistant)
#   CASES=file.jsonl (agent eval --cases; default: its built-in suite), PORT=8000, TP=tensor parallel size
# Writes OUT_DIR/{mtp,hybrid}.json (agent eval --json), OUT_DIR/{mtp,hybrid}.serve.log, and prints the wall time
# of each eval; the JSON reports carry the server's speculation stats per request.
set -euo pipefail
out="${1:-evals-gpu-$(date +%Y%m%d-%H%M%S)}"
[[ $# -gt 0 ]] && shift
[[ "${1:-}" == "--" ]] && shift
model="${MODEL:-google/gemma-4-${SIZE:-26B-A4B}-it}"
port="${PORT:-8000}"
mkdir -p "$out"

server=""
stop_server() {
    if [[ -n "$server" ]] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server"   # the launcher forwards it to vLLM and waits for it
        wait "$server" || true
    fi
    server=""
}
trap stop_server EXIT INT TERM

for method in mtp hybrid; do
    args=(serve --engine vllm --model "$model" --speculation "$method" --served-model-name gemma4 --port "$port")
    [[ -n "${DRAFT:-}" ]] && args+=(--draft "$DRAFT")
    [[ -n "${TP:-}" ]] && args+=(--tensor-parallel-size "$TP")
    agent "${args[@]}" ${1+-- "$@"} > "$out/$method.url" 2> "$out/$method.serve.log" &
    server=$!
    echo "[$method] starting vLLM (log: $out/$method.serve.log)" >&2
    until [[ -s "$out/$method.url" ]]; do
        kill -0 "$server" 2>/dev/null || { echo "[$method] vLLM did not start:" >&2; tail -30 "$out/$method.serve.log" >&2; exit 1; }
        sleep 5
    done
    url="$(head -1 "$out/$method.url")"
    echo "[$method] serving at $url; running agent eval" >&2
    start=$(date +%s)
    agent eval --model hosted_vllm/gemma4 --api-base "$url" --json "$out/$method.json" ${CASES:+--cases "$CASES"}
    echo "$method: $(( $(date +%s) - start )) s wall for agent eval" | tee -a "$out/summary.txt"
    stop_server
done
echo "reports: $out/mtp.json $out/hybrid.json; wall times: $out/summary.txt" >&2
