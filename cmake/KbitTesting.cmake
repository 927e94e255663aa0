# kbit_add_test(NAME name LABEL cpu|cuda|slow SOURCES ... [LIBS ...])
#
# One GoogleTest executable; every test in it is registered with CTest under LABEL.
# Tests find ../shared through the KBIT_SHARED_DIR environment variable (see src/testing/).
function(kbit_add_test)
  if(NOT KBIT_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(T "" "NAME;LABEL" "SOURCES;LIBS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE kbit kbit_testing kbit_warnings GTest::gtest_main ${T_LIBS})
  # Tests find committed test data (testdata/ folders) under the source tree.
  target_compile_definitions(${T_NAME} PRIVATE KBIT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  gtest_discover_tests(${T_NAME} PROPERTIES LABELS ${T_LABEL} DISCOVERY_TIMEOUT 60)
endfunction()

# kbit_add_fuzz_target(NAME <name> SOURCE <file> CORPUS <dir>): a fuzz target of the library's
# LLVMFuzzerTestOneInput. With the `fuzz` preset (KBIT_FUZZ) it is a libFuzzer executable; otherwise
# it is linked with the bounded corpus-and-mutation driver (src/testing/fuzz_driver.cc), which the
# CPU suite runs for 10 seconds over CORPUS (under ASan in the `asan` preset).
function(kbit_add_fuzz_target)
  if(NOT KBIT_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(F "" "NAME;SOURCE;CORPUS" "" ${ARGN})
  add_executable(${F_NAME} ${F_SOURCE})
  target_link_libraries(${F_NAME} PRIVATE kbit kbit_warnings)
  if(KBIT_FUZZ)
    target_link_options(${F_NAME} PRIVATE -fsanitize=fuzzer)
  else()
    target_sources(${F_NAME} PRIVATE ${PROJECT_SOURCE_DIR}/src/testing/fuzz_driver.cc)
    add_test(NAME ${F_NAME}_corpus COMMAND ${F_NAME} ${F_CORPUS} --seconds 10)
    set_tests_properties(${F_NAME}_corpus PROPERTIES LABELS cpu)
  endif()
endfunction()
