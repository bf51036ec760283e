#!/usr/bin/env bash
# One report of what fedtrust does on a GPU machine, for the day one is lent (issue 13, section 3).
#
#   bash bench/gpu_check.sh [REPORT]        # default report: gpu_check_report.md (or $OUT/gpu_check_report.md)
#
# Runs, each under its own time limit (at most 570 s in all), and writes one
# Markdown report with each step's output, exit status and seconds:
#   1. the device (nvidia-smi, torch) ........................................ fails clearly without CUDA
#   2. the CUDA tests (pytest -k cuda: CUDA codecs against the CPU ones)
#   3. bench/gradinv.py --device cuda: batched (vmap) against one by one; the goal is >= 5x
#   4. bench/compression.py --device cuda: every codec against PyTorch's PowerSGD math
#   5. bench/powersgd_signs.py: do a CUDA client's and the CPU server's orth(Q) agree in sign?
#   6. bench/gpu_flwr_run.py: one flwr run of ResNet-18 with client-resources-num-gpus
#   7. python -m experiments.estimate --profile paper --device cuda: the paper sweep's time
# The exit status is the number of steps that failed (0: all passed).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
REPORT=${1:-${OUT:+$OUT/}gpu_check_report.md}
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

# Why there is nothing to check, or nothing: torch missing, a CPU-only build, no device visible.
why=$("$PYTHON" - <<'PY' 2>&1
try:
    import torch
except ImportError as err:
    print(f"torch is not importable ({err}); activate the project's virtual environment or set PYTHON")
else:
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(f"torch {torch.__version__} ({build}) sees no CUDA device (torch.cuda.is_available() is False)")
PY
)
if [ -n "$why" ]; then
  echo "gpu_check: $why." >&2
  echo "gpu_check: run it on a machine with an NVIDIA GPU; nothing was checked." >&2
  exit 2
fi

failed=0
{
  echo "# fedtrust GPU check"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
} > "$REPORT"

# step TITLE LIMIT_SECONDS COMMAND...: run it, append its output, status and time to the report.
step() {
  local title=$1 limit=$2; shift 2
  local start rc log
  log=$(mktemp)
  echo ">> $title" >&2
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - start ))
  [ "$rc" -eq 0 ] || failed=$((failed + 1))
  local verdict="ok"
  [ "$rc" -eq 0 ] || verdict="FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ", over its ${limit} s limit"))"
  {
    echo
    echo "## $title: $verdict, ${took} s"
    echo
    echo '```'
    echo "\$ $*"
    tail -n 60 "$log"
    echo '```'
  } >> "$REPORT"
  echo "   $verdict, ${took} s" >&2
  rm -f "$log"
}

step "Device" 30 bash -c "nvidia-smi -L; $PYTHON -c 'import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.device_count(), \"device(s)\")'"
step "CUDA tests" 120 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests -k cuda
step "Gradient inversion, batched against one by one" 90 "$PYTHON" bench/gradinv.py --device cuda
step "Compression codecs" 60 "$PYTHON" bench/compression.py --device cuda
step "PowerSGD orthogonalisation signs, CUDA client against CPU server" 30 "$PYTHON" bench/powersgd_signs.py --device cuda
step "flwr run, ResNet-18 on GPU clients" 180 "$PYTHON" bench/gpu_flwr_run.py --gpus-per-client 0.5 --timeout 150
step "Paper sweep estimate" 60 "$PYTHON" -m experiments.estimate --profile paper --device cuda

echo >> "$REPORT"
echo "$failed step(s) failed." >> "$REPORT"
cat "$REPORT"
exit "$failed"
