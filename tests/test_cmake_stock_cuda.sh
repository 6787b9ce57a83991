#!/usr/bin/env bash
# The CUDA configuration configures with Debian 12's STOCK FindCUDAToolkit.cmake (CMake 3.25.1), whose
# lines 1087-1088 set a property on CUDA::nvToolsExt whenever CMAKE_MINIMUM_REQUIRED_VERSION >= 3.25 although
# CUDA 13 has no libnvToolsExt. Our development machines carry a patched copy
# (`if(TARGET CUDA::nvToolsExt AND ...)`), which hides the failure; this test undoes that patch in a private
# copy of the module (the only difference from cmake-data_3.25.1-1's file, checked by diffing the .deb) and
# puts it first on CMAKE_MODULE_PATH:
#  - control: a project with cmake_minimum_required(VERSION 3.25) fails there, naming nvToolsExt (so the copy
#    is the broken module and is the one in use);
#  - tbert's CMakeLists.txt (-DTBERT_CUDA=ON) configures there.
# Exit 77 when there is no CUDA toolkit (nvcc) to configure with.
set -u
SRC=${TBERT_SOURCE_DIR:?TBERT_SOURCE_DIR not set}
nvcc=""
for c in "$(command -v nvcc 2>/dev/null)" /usr/local/cuda/bin/nvcc; do
    [ -n "$c" ] && [ -x "$c" ] && { nvcc=$c; break; }
done
source "$(dirname "${BASH_SOURCE[0]}")/util/testlib.sh" || exit 1
[ -n "$nvcc" ] || tl_skip_external "no nvcc (the CUDA toolkit) to configure with"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo 'message("${CMAKE_ROOT}")' > "$TMP/root.cmake"
root=$(cmake -P "$TMP/root.cmake" 2>&1)
mod=$root/Modules/FindCUDAToolkit.cmake
[ -f "$mod" ] || { echo "FAIL: no $mod" >&2; exit 1; }
mkdir -p "$TMP/stock"
stock='if(CMAKE_MINIMUM_REQUIRED_VERSION VERSION_GREATER_EQUAL 3.25)'
{
    echo 'message(STATUS "tbert-test: stock FindCUDAToolkit in use")'
    # undo the patch; the module's own includes still come from CMake's folder
    sed -e 's/if(TARGET CUDA::nvToolsExt AND CMAKE_MINIMUM_REQUIRED_VERSION/if(CMAKE_MINIMUM_REQUIRED_VERSION/' \
        -e "s|\${CMAKE_CURRENT_LIST_DIR}|$root/Modules|g" "$mod"
} > "$TMP/stock/FindCUDAToolkit.cmake"
have_stock=0
grep -qF "$stock" "$TMP/stock/FindCUDAToolkit.cmake" && have_stock=1
grep -A1 -F "$stock" "$TMP/stock/FindCUDAToolkit.cmake" | grep -q 'set_property(TARGET CUDA::nvToolsExt' || have_stock=0
echo "test_cmake_stock_cuda: $(cmake --version | head -1), module $mod, $( [ $have_stock = 1 ] && echo "stock form rebuilt" || echo "no 3.25.1 guard found: checking the installed module as it is")" >&2

# control: the bug is really there with this module
if [ "$have_stock" = 1 ]; then
    mkdir -p "$TMP/control"
    cat > "$TMP/control/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(control LANGUAGES C CUDA)
find_package(CUDAToolkit REQUIRED)
EOF
    cmake -S "$TMP/control" -B "$TMP/control-build" -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_MODULE_PATH="$TMP/stock" \
        > "$TMP/control.log" 2>&1
    rc=$?
    grep -q "tbert-test: stock FindCUDAToolkit in use" "$TMP/control.log" || fail "control: the private module was not used"
    if [ -e "$(dirname "$(dirname "$nvcc")")/lib64/libnvToolsExt.so" ]; then
        echo "test_cmake_stock_cuda: this toolkit has libnvToolsExt: the control cannot show the bug" >&2
    elif [ "$rc" = 0 ] || ! grep -q nvToolsExt "$TMP/control.log"; then
        fail "control: cmake_minimum_required(VERSION 3.25) configured with the stock module (exit $rc): the test does not reproduce the bug"
    fi
fi

# tbert itself
cmake -S "$SRC" -B "$TMP/build" -DTBERT_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_MODULE_PATH="$TMP/stock" \
    > "$TMP/tbert.log" 2>&1
rc=$?
grep -q "tbert-test: stock FindCUDAToolkit in use" "$TMP/tbert.log" || fail "tbert: the private module was not used"
[ "$rc" = 0 ] || fail "tbert does not configure with the stock FindCUDAToolkit (exit $rc): $(grep -m3 -A3 'CMake Error' "$TMP/tbert.log")"
grep -q "plugin ON" "$TMP/tbert.log" || fail "tbert configured without the CUDA plugin: $(grep 'tbert:' "$TMP/tbert.log")"

[ "$fails" = 0 ] && echo "test_cmake_stock_cuda: ok" >&2
[ "$fails" = 0 ]
