# The emulated CUDA device's host half (memory, streams, events, copies, errors: host.cpp) and its cuBLAS
# (cublas.cpp). Owner: the emu-host work. kernels/emu/CMakeLists.txt includes this file and adds
# TBERT_EMU_HOST_SOURCES to the emulator library; the host half's checks are registered by
# tests/emu/host_tests.cmake (tbert_emu_host_tests).
set(TBERT_EMU_HOST_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/host.cpp
  ${CMAKE_CURRENT_LIST_DIR}/cublas.cpp)
