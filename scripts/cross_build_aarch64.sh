#!/usr/bin/env bash
# Cross-build the patched llama.cpp and dndllama's native core for ARM64 (aarch64 Linux: the CPU
# backend Apple Silicon and Android phones compile too), run its checks under qemu-aarch64 and compare
# them with the same checks built for this machine. Correctness only: qemu says nothing about speed.
#
#     scripts/cross_build_aarch64.sh            # build into build-aarch64/, run, compare
#
# Needs Debian's cross toolchain and qemu:  apt-get install g++-aarch64-linux-gnu qemu-user
# and this checkout's own build (pip install -e .: the host reference links its static libraries,
# and tests/tiny_models.py writes the tiny models). JOBS sets the parallel compiles (default 2).
#
# What runs (scripts/native_check.cpp over cpp/native.h): finite-difference gradient checks of our
# backward ops, a tiny Gemma 3 and a tiny llama trained 6 AdamW steps (the loss must fall), and one
# SGD step whose validation loss must agree with the host build's to 1e-4 (relative): a gradient that
# differed on ARM64 would move the weights differently.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT_DIR:-$ROOT/build-aarch64}
JOBS=${JOBS:-2}
PYTHON=${PYTHON:-python}
SYSROOT=/usr/aarch64-linux-gnu

for tool in aarch64-linux-gnu-g++ qemu-aarch64 cmake ninja; do
    command -v "$tool" > /dev/null || {
        echo "error: $tool not found; fix: apt-get install g++-aarch64-linux-gnu qemu-user cmake ninja-build" >&2
        exit 1
    }
done
HOST_LIBS=$(ls -d "$ROOT"/build/*/llama.cpp 2> /dev/null | head -1)
[ -n "$HOST_LIBS" ] && [ -f "$HOST_LIBS/src/libllama.a" ] || {
    echo "error: no host build of the native core under $ROOT/build/; fix: pip install -e . first" >&2
    exit 1
}

# 1. the pinned llama.cpp with cpp/patches applied (a no-op when llama.cpp/ is current)
"$PYTHON" "$ROOT/cpp/fetch_llama_cpp.py" --dest "$ROOT/llama.cpp" --patches "$ROOT/cpp/patches"

# 2. a CMake project: libllama + ggml (static) and the driver over every native unit but the bindings
mkdir -p "$OUT/project"
cat > "$OUT/project/CMakeLists.txt.new" << EOF
cmake_minimum_required(VERSION 3.21)
project(dndllama_native_check LANGUAGES C CXX)
set(CMAKE_CXX_STANDARD 17)
set(BUILD_SHARED_LIBS OFF CACHE BOOL "" FORCE)
foreach(opt LLAMA_BUILD_COMMON LLAMA_BUILD_TESTS LLAMA_BUILD_TOOLS LLAMA_BUILD_EXAMPLES LLAMA_BUILD_SERVER LLAMA_OPENSSL LLAMA_CURL)
  set(\${opt} OFF CACHE BOOL "" FORCE)
endforeach()
add_subdirectory("$ROOT/llama.cpp" llama.cpp EXCLUDE_FROM_ALL)
file(GLOB units "$ROOT/cpp/*.cpp")
list(FILTER units EXCLUDE REGEX "bindings\\\\.cpp\$")
add_executable(native_check "$ROOT/scripts/native_check.cpp" \${units})
target_include_directories(native_check PRIVATE "$ROOT/cpp" "$ROOT/llama.cpp/src")
target_link_libraries(native_check PRIVATE llama ggml)
EOF
# rewrite only on change, so a rerun builds incrementally
cmp -s "$OUT/project/CMakeLists.txt.new" "$OUT/project/CMakeLists.txt" || mv "$OUT/project/CMakeLists.txt.new" "$OUT/project/CMakeLists.txt"
rm -f "$OUT/project/CMakeLists.txt.new"

# armv8.2-a + fp16 + dotprod: what Apple M1 and recent Android phones have, and qemu's "max" CPU runs
cmake -S "$OUT/project" -B "$OUT/aarch64" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
    -DCMAKE_FIND_ROOT_PATH="$SYSROOT" -DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER \
    -DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY -DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY \
    -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+fp16+dotprod ${CMAKE_ARGS:-} > "$OUT/aarch64-configure.log"
cmake --build "$OUT/aarch64" --target native_check -j "$JOBS"

# 3. the same driver for this machine, linked against the extension's build of the same tree
mkdir -p "$OUT/host"
units=()
for f in "$ROOT"/cpp/*.cpp; do [ "$(basename "$f")" = bindings.cpp ] || units+=("$f"); done
g++ -O2 -std=c++17 -fopenmp -I"$ROOT/cpp" -I"$ROOT/llama.cpp/include" -I"$ROOT/llama.cpp/ggml/include" \
    -I"$ROOT/llama.cpp/src" "$ROOT/scripts/native_check.cpp" "${units[@]}" \
    "$HOST_LIBS/src/libllama.a" "$HOST_LIBS/ggml/src/libggml.a" "$HOST_LIBS/ggml/src/libggml-cpu.a" \
    "$HOST_LIBS/ggml/src/libggml-base.a" -lpthread -o "$OUT/host/native_check"

# 4. tiny models (written on the host: GGUF is the same on every architecture), then both runs
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT/tests" && "$PYTHON" -c "
import sys; from pathlib import Path; from tiny_models import make_tiny_model
for arch in ('gemma3', 'llama'):
    make_tiny_model(Path(sys.argv[1]) / f'{arch}.gguf', arch, n_embd=128, n_ff=256)" "$WORK")
mkdir -p "$WORK/aarch64" "$WORK/host"
file "$OUT/aarch64/native_check" | grep -q "ARM aarch64" || { echo "error: the cross-built driver is not aarch64" >&2; exit 1; }
echo "== aarch64 (qemu-aarch64)"
qemu-aarch64 -L "$SYSROOT" "$OUT/aarch64/native_check" "$WORK/gemma3.gguf" "$WORK/llama.gguf" "$WORK/aarch64" | tee "$OUT/aarch64.txt"
echo "== host ($(uname -m))"
"$OUT/host/native_check" "$WORK/gemma3.gguf" "$WORK/llama.gguf" "$WORK/host" | tee "$OUT/host.txt"

# 5. the SGD step's validation losses must agree
"$PYTHON" - "$OUT/aarch64.txt" "$OUT/host.txt" << 'EOF'
import re, sys
def losses(path):
    return {m[0]: (float(m[1]), float(m[2])) for m in
            re.findall(r"compare (\S+) val_loss_before=(\S+) val_loss_after=(\S+)", open(path).read())}
arm, host = losses(sys.argv[1]), losses(sys.argv[2])
assert arm.keys() == host.keys() and arm, (arm, host)
for name in arm:
    for a, h in zip(arm[name], host[name]):
        if abs(a - h) > 1e-4 * abs(h):
            sys.exit(f"FAIL: {name}: aarch64 {arm[name]} vs host {host[name]}")
    print(f"{name}: aarch64 matches the host build (val loss {arm[name][0]:.6f} -> {arm[name][1]:.6f})")
print("aarch64 cross-build: all checks passed under qemu and match the host")
EOF
