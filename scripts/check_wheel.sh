#!/usr/bin/env bash
# Installs a wheel that scripts/package.sh wrote into a fresh virtualenv with no package index
# (as on a Kaggle notebook with the internet off) and runs it:
#
#   scripts/check_wheel.sh dist/ensemble-0.1.0-py3-none-manylinux_2_31_x86_64.whl
#
# - `ensemble --version` names the build (cpu, or CUDA with its kernels);
# - `ensemble cv --folds 3` on the generated example writes a complete submission
#   (scripts/check_submission.py: every test id once, rows summing to 1);
# - CUDA wheel: its dependencies (nvidia-cublas-cu12, nvidia-curand-cu12) are installed from a
#   local wheelhouse, .tools/wheelhouse (downloaded once from PyPI: about 600 MB).
#   `transformer --device cuda:0` with a model folder that does not exist must exit non-zero
#   with one line that names no CUDA library (the wheels' cuBLAS and cuRAND were found
#   without LD_LIBRARY_PATH): where this machine has no GPU, the line names the missing driver
#   or GPU; where it has one, the GPU opens and the line names the missing model folder (or
#   the GPU's compute capability, if the kernels do not support it). Any other answer fails
#   the check. Throughput on the GPU: scripts/bench_gpu.sh.
# Prints the seconds each step took; exits non-zero at the first check that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=${1:?usage: scripts/check_wheel.sh dist/ensemble-*.whl}
[ -f "$wheel" ] || { echo "check_wheel: no $wheel" >&2; exit 1; }
say() { echo "check_wheel: $*" >&2; }
fail() {
    say "error: $*"
    exit 1
}
PYTHON=${PYTHON:-python3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
find_links=(--find-links "$(dirname "$wheel")")
case "$(basename "$wheel")" in
*+cuda*)
    cuda=true
    wheelhouse=.tools/wheelhouse
    mkdir -p "$wheelhouse"
    if [ ! -f "$wheelhouse/.complete" ]; then
        # With their own dependencies (cuBLAS 12.9 needs nvidia-cuda-nvrtc-cu12), as a Kaggle
        # dataset of wheels must hold them.
        say "downloading nvidia-cublas-cu12 and nvidia-curand-cu12 into $wheelhouse (once)"
        "$PYTHON" -m pip download -q --only-binary :all: -d "$wheelhouse" \
            nvidia-cublas-cu12 nvidia-curand-cu12
        touch "$wheelhouse/.complete"
    fi
    find_links+=(--find-links "$wheelhouse")
    ;;
*) cuda=false ;;
esac

start=$(date +%s)
"$PYTHON" -m venv "$work/venv"
# No index: everything comes from the wheel's folder (and the wheelhouse), as on Kaggle.
"$work/venv/bin/pip" install -q --no-index "${find_links[@]}" "$wheel" ||
    fail "pip could not install $wheel without an index"
say "installed in $(($(date +%s) - start)) s"
ensemble="$work/venv/bin/ensemble"
[ -x "$ensemble" ] || fail "the wheel put no ensemble on the venv's PATH"
# PATH holds the venv only (and the system's): no LD_LIBRARY_PATH is set for the binary.
run() { env -u LD_LIBRARY_PATH PATH="$work/venv/bin:/usr/bin:/bin" "$@"; }

version=$(run ensemble --version)
say "--version: $version"
if $cuda; then
    [[ $version == *"cuda: CUDA 12"* ]] || fail "the CUDA wheel's binary says: $version"
else
    [[ $version == *"(cpu)" ]] || fail "the CPU wheel's binary says: $version"
fi

start=$(date +%s)
(cd "$work" && run ensemble cv --folds 3 --out run >cv.log 2>&1) ||
    fail "ensemble cv --folds 3 failed: $(tail -n 5 "$work/cv.log")"
"$PYTHON" scripts/check_submission.py "$work/run/example/test.csv" "$work/run/submission.csv"
say "cv --folds 3 on the example: OOF log loss $(awk '/^OOF/ {print $3}' "$work/cv.log") in $(($(date +%s) - start)) s"

if $cuda; then
    run ensemble example --out "$work/example" >/dev/null
    set +e
    run ensemble transformer --model "$work/no-model-needed-yet" --train "$work/example/train.csv" \
        --test "$work/example/test.csv" --out "$work/deberta" --device cuda:0 >"$work/gpu.out" 2>"$work/gpu.err"
    status=$?
    set -e
    message=$(cat "$work/gpu.err")
    [ "$status" -ne 0 ] || fail "--device cuda:0 with no model folder exited 0"
    [ "$(wc -l <"$work/gpu.err")" -eq 1 ] || fail "--device cuda:0 printed more than one line: $message"
    [[ $message != *libcublas* && $message != *libcurand* && $message != *panicked* ]] ||
        fail "cuBLAS or cuRAND not found in the installed wheels: $message"
    # (Not /dev/nvidiactl: libcuda makes that node itself when run as root, GPU or not.)
    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        # The libraries and the driver loaded and the GPU opened: what stops the run is the
        # missing model (or a GPU the kernels do not support, named by its capability).
        [[ $message == *"no-model-needed-yet"* || $message == *"compute capability"* ]] ||
            fail "this machine has an NVIDIA GPU, but --device cuda:0 did not open it: $message"
        say "--device cuda:0 on this machine's GPU (exit $status): $message"
    else
        # No GPU: either no driver library at all, or one (Debian's libcuda1, which its CUDA
        # toolkit brings along) that finds no device.
        [[ $message == *"no NVIDIA driver: libcuda.so.1"* || $message == *"no usable GPU"* ||
            $message == *"sees no GPU"* ]] || fail "the message names neither driver nor GPU: $message"
        say "--device cuda:0 without a GPU (exit $status): $message"
    fi
fi
say "ok: $(basename "$wheel")"
