#!/usr/bin/env bash
# Installs a wheel that scripts/package.sh wrote with no package index (as on a Kaggle
# notebook with the internet off) and runs it:
#
#   scripts/check_wheel.sh dist/arena_ensemble-0.1.0-py3-none-manylinux_2_31_x86_64.whl
#
# - installed three ways, the `ensemble` found there is the ELF binary itself (no Python
#   launcher) and `ensemble --version` runs: in a fresh virtualenv (PREFIX/bin, as in conda),
#   with `pip install --user` (PYTHONUSERBASE set to a temporary folder: its bin/), and
#   unzipped (`<dist>-<v>.data/scripts/ensemble`, run from there);
# - `ensemble --version` names the build (cpu, or CUDA with its kernels);
# - `ensemble cv --folds 3` on the generated example writes a complete submission
#   (scripts/check_submission.py: every test id once, rows summing to 1);
# - CUDA wheel (arena_ensemble_cuda12-*): its dependencies (nvidia-cublas-cu12,
#   nvidia-curand-cu12, nvidia-cuda-nvrtc-cu12) are installed from a local wheelhouse,
#   .tools/wheelhouse (downloaded once from PyPI: about 600 MB).
#   `transformer --device cuda:0` with a model folder that does not exist must exit non-zero
#   with one line that names no CUDA library (the wheels' cuBLAS and cuRAND were found
#   without LD_LIBRARY_PATH): where this machine has no GPU, the line names the missing driver
#   or GPU; where it has one, the GPU opens and the line names the missing model folder (or
#   the GPU's compute capability, if the kernels do not support it). Any other answer fails
#   the check. Checked for the virtualenv's and the `--user` install's binary. Throughput on
#   the GPU: scripts/bench_gpu.sh.
# Prints the seconds each step took; exits non-zero at the first check that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=${1:?usage: scripts/check_wheel.sh dist/arena_ensemble*.whl}
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
arena_ensemble_cuda12-*)
    cuda=true
    wheelhouse=.tools/wheelhouse
    mkdir -p "$wheelhouse"
    if [ ! -f "$wheelhouse/.complete" ]; then
        # With their own dependencies, as a Kaggle dataset of wheels must hold them.
        say "downloading nvidia-cublas-cu12, nvidia-curand-cu12 and nvidia-cuda-nvrtc-cu12 into $wheelhouse (once)"
        "$PYTHON" -m pip download -q --only-binary :all: -d "$wheelhouse" \
            nvidia-cublas-cu12 nvidia-curand-cu12 nvidia-cuda-nvrtc-cu12
        touch "$wheelhouse/.complete"
    fi
    find_links+=(--find-links "$wheelhouse")
    ;;
*) cuda=false ;;
esac

# The ensemble at $1 (how it was installed: $2) is an executable ELF file, not a launcher
# script, and names the wheel's build; prints its --version.
check_binary() {
    local version
    [ -x "$1" ] || fail "$2: no executable $1"
    [[ $(head -c 4 "$1") == $'\x7fELF' ]] || fail "$2: $1 is not the binary: $(head -n 1 "$1")"
    version=$(env -u LD_LIBRARY_PATH "$1" --version) || fail "$2: $1 --version failed"
    if $cuda; then
        [[ $version == *"cuda: CUDA 12"* ]] || fail "$2: the CUDA wheel's binary says: $version"
    else
        [[ $version == *"(cpu)" ]] || fail "$2: the CPU wheel's binary says: $version"
    fi
    say "$2: $1 is the binary; --version: $version"
}

start=$(date +%s)
"$PYTHON" -m venv "$work/venv"
# No index: everything comes from the wheel's folder (and the wheelhouse), as on Kaggle.
"$work/venv/bin/pip" install -q --no-index "${find_links[@]}" "$wheel" ||
    fail "pip could not install $wheel without an index"
say "installed in a virtualenv in $(($(date +%s) - start)) s"
check_binary "$work/venv/bin/ensemble" "virtualenv"

# `--user` (the usual install on clusters): PYTHONUSERBASE/bin/ensemble.
start=$(date +%s)
PYTHONUSERBASE="$work/user" PIP_BREAK_SYSTEM_PACKAGES=1 "$PYTHON" -m pip install -q --user \
    --no-index --no-warn-script-location "${find_links[@]}" "$wheel" ||
    fail "pip install --user could not install $wheel without an index"
say "installed with --user in $(($(date +%s) - start)) s"
check_binary "$work/user/bin/ensemble" "pip install --user"

# Unzipped, as someone without pip would use it (unzip keeps the executable bit).
unzip -q "$wheel" -d "$work/unzipped" || fail "unzip could not extract $wheel"
unzipped=$(find "$work/unzipped" -path '*.data/scripts/ensemble')
[ -n "$unzipped" ] || fail "unzipped, $wheel has no *.data/scripts/ensemble"
check_binary "$unzipped" "unzipped"

# PATH holds the venv only (and the system's): no LD_LIBRARY_PATH is set for the binary.
run() { env -u LD_LIBRARY_PATH PATH="$work/venv/bin:/usr/bin:/bin" "$@"; }

start=$(date +%s)
(cd "$work" && run ensemble cv --folds 3 --out run >cv.log 2>&1) ||
    fail "ensemble cv --folds 3 failed: $(tail -n 5 "$work/cv.log")"
"$PYTHON" scripts/check_submission.py "$work/run/example/test.csv" "$work/run/submission.csv"
say "cv --folds 3 on the example: OOF log loss $(awk '/^OOF/ {print $3}' "$work/cv.log") in $(($(date +%s) - start)) s"

# `--device cuda:0` with the binary at $1 (how it was installed: $2): one line, after the
# installed wheels' cuBLAS and cuRAND were found.
check_gpu_line() {
    local status message
    set +e
    env -u LD_LIBRARY_PATH "$1" transformer --model "$work/no-model-needed-yet" \
        --train "$work/example/train.csv" --test "$work/example/test.csv" --out "$work/deberta" \
        --device cuda:0 >"$work/gpu.out" 2>"$work/gpu.err"
    status=$?
    set -e
    message=$(cat "$work/gpu.err")
    [ "$status" -ne 0 ] || fail "$2: --device cuda:0 with no model folder exited 0"
    [ "$(wc -l <"$work/gpu.err")" -eq 1 ] || fail "$2: --device cuda:0 printed more than one line: $message"
    [[ $message != *libcublas* && $message != *libcurand* && $message != *panicked* ]] ||
        fail "$2: cuBLAS or cuRAND not found in the installed wheels: $message"
    # (Not /dev/nvidiactl: libcuda makes that node itself when run as root, GPU or not.)
    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        # The libraries and the driver loaded and the GPU opened: what stops the run is the
        # missing model (or a GPU the kernels do not support, named by its capability).
        [[ $message == *"no-model-needed-yet"* || $message == *"compute capability"* ]] ||
            fail "$2: this machine has an NVIDIA GPU, but --device cuda:0 did not open it: $message"
        say "$2: --device cuda:0 on this machine's GPU (exit $status): $message"
    else
        # No GPU: either no driver library at all, or one (Debian's libcuda1, which its CUDA
        # toolkit brings along) that finds no device.
        [[ $message == *"no NVIDIA driver: libcuda.so.1"* || $message == *"no usable GPU"* ||
            $message == *"sees no GPU"* ]] || fail "$2: the message names neither driver nor GPU: $message"
        say "$2: --device cuda:0 without a GPU (exit $status): $message"
    fi
}

if $cuda; then
    run ensemble example --out "$work/example" >/dev/null
    check_gpu_line "$work/venv/bin/ensemble" "virtualenv"
    check_gpu_line "$work/user/bin/ensemble" "pip install --user"
fi
say "ok: $(basename "$wheel")"
