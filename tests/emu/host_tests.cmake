# The emulated device's host-half checks (streams, events, copies, memory, cuBLAS, bf16): tests/emu/test_emu_host*.
# tbert_emu_host_tests(EMU_LIB [FLAGS...]) builds each against the emulator library EMU_LIB and registers it with
# the labels "cuda;emu;emu_host". They need nothing but the emulator and cmocka (no tbert library, no GPU, no corpus).
function(tbert_emu_host_tests emu_lib)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(CMOCKA REQUIRED IMPORTED_TARGET cmocka)
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/test_emu_host*.c
                                   ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/test_emu_host*.cpp)
  foreach(src ${srcs})
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} ${src})
    target_compile_options(${name} PRIVATE -Wall -Wextra -Werror ${ARGN})
    target_compile_definitions(${name} PRIVATE _GNU_SOURCE)
    target_link_libraries(${name} PRIVATE ${emu_lib} PkgConfig::CMOCKA m)
    add_test(NAME ${name} COMMAND ${name})
    set_tests_properties(${name} PROPERTIES LABELS "cuda;emu;emu_host" TIMEOUT 300)
  endforeach()
endfunction()
