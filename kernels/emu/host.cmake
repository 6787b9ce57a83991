# The emulated CUDA device's host half (memory, streams, events, copies, errors: host.cpp) and its cuBLAS
# (cublas.cpp). Owner: the emu-host work; included by kernels/emu/CMakeLists.txt, which builds the emulator
# library from these sources and the execution half's.
set(TBERT_EMU_HOST_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/host.cpp
  ${CMAKE_CURRENT_LIST_DIR}/cublas.cpp)
