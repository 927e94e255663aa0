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
