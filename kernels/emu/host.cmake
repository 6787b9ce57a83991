# The emulated CUDA device's host half (memory, streams, events, copies, errors: host.cpp) and its cuBLAS
# (cublas.cpp), with their self-tests (tests/emu/test_emu_host*). Owner: the emu-host work. Included by
# kernels/emu/CMakeLists.txt after it has made the emulator library tbert_emu; TBERT_EMU_HOST_SOURCES is there for
# a build that makes its own library.
set(TBERT_EMU_HOST_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/host.cpp
  ${CMAKE_CURRENT_LIST_DIR}/cublas.cpp)
if(TARGET tbert_emu)
  target_sources(tbert_emu PRIVATE ${TBERT_EMU_HOST_SOURCES})
  include(${CMAKE_CURRENT_LIST_DIR}/../../tests/emu/host_tests.cmake)
  tbert_emu_host_tests(tbert_emu -Wall -Wextra -Werror ${TBERT_EMU_SAN_FLAGS})
endif()
