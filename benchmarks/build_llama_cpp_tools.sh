#!/usr/bin/env bash
# Build llama.cpp's own llama-bench, llama-perplexity and llama-batched-bench from the very source of the
# llama-cpp-python release we use, so benchmarks/gguf_vs_peers.py can compare against
# them. Nothing here is a dependency of edge_chat. About 8 minutes on 2 cores.
#
#   benchmarks/build_llama_cpp_tools.sh            # -> $EDGE_CHAT_BENCH_CACHE/llama.cpp-<ver>/bin
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 JOBS=2 benchmarks/build_llama_cpp_tools.sh
#
# Prints the bin folder; gguf_vs_peers.py finds it there (or via $LLAMA_BENCH=/path/llama-bench).
set -euo pipefail

VER="${LLAMA_CPP_PYTHON_VERSION:-$(python3 -c 'import llama_cpp; print(llama_cpp.__version__)' 2>/dev/null || echo 0.3.36)}"
CACHE="${EDGE_CHAT_BENCH_CACHE:-$HOME/.cache/edge-chat-bench}"
JOBS="${JOBS:-2}"
PY="${PYTHON:-python3}"
OUT="$CACHE/llama.cpp-$VER"

if [[ -x "$OUT/bin/llama-bench" && -x "$OUT/bin/llama-perplexity" && \
      -x "$OUT/bin/llama-batched-bench" ]]; then
  echo "$OUT/bin"; exit 0
fi
mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.build-$VER.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "downloading llama-cpp-python==$VER source ..." >&2
"$PY" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VER" -d "$WORK" >&2
tar -xzf "$WORK"/llama_cpp_python-"$VER".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VER/vendor/llama.cpp"
[[ -f "$SRC/CMakeLists.txt" ]] || { echo "no vendor/llama.cpp in the sdist" >&2; exit 1; }

echo "configuring ..." >&2
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
      -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF >&2
echo "building llama-bench, llama-perplexity and llama-batched-bench with -j$JOBS ..." >&2
cmake --build "$WORK/build" -j"$JOBS" --target llama-bench llama-perplexity \
      llama-batched-bench >&2

mkdir -p "$WORK/out/bin"
cp "$WORK/build/bin/llama-bench" "$WORK/build/bin/llama-perplexity" \
   "$WORK/build/bin/llama-batched-bench" "$WORK/out/bin/"
(cd "$SRC" && git rev-parse HEAD 2>/dev/null || true) > "$WORK/out/COMMIT"
echo "$VER" > "$WORK/out/VERSION"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
echo "$OUT/bin"
