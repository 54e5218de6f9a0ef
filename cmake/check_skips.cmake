# Proves that CTest reports a skipped cmocka case as skipped, not passed: runs one case of
# test_json through CTest with the properties discover_tests.cmake gave it, with EW_TEST_SKIP
# making it skip (tests/support/ew_test.c), in a folder of its own so that the outer run's
# logs stay untouched; then runs it again without, where it must pass.
#   cmake -DBIN_DIR=<build> -DCASE=test_json.<case> -P check_skips.cmake
set(dir ${BIN_DIR}/check-skips)
file(REMOVE_RECURSE ${dir})
file(MAKE_DIRECTORY ${dir})
string(REGEX REPLACE "\\..*" "" exe "${CASE}")
file(WRITE ${dir}/CTestTestfile.cmake "include(\"${BIN_DIR}/ctest_${exe}.cmake\")\n")
string(REGEX REPLACE "^[^.]*\\." "" name "${CASE}")
set(ENV{EW_TEST_SKIP} "${name}")
execute_process(COMMAND ${CMAKE_CTEST_COMMAND} -R "^${CASE}$" WORKING_DIRECTORY ${dir}
                OUTPUT_VARIABLE out ERROR_VARIABLE out RESULT_VARIABLE rc)
if(NOT out MATCHES "Skipped" OR NOT out MATCHES "1 tests? (were )?not run|The following tests did not run")
  message(FATAL_ERROR "a skipping case was not reported as skipped (rc ${rc}):\n${out}")
endif()
unset(ENV{EW_TEST_SKIP})
execute_process(COMMAND ${CMAKE_CTEST_COMMAND} -R "^${CASE}$" WORKING_DIRECTORY ${dir}
                OUTPUT_VARIABLE out ERROR_VARIABLE out RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT out MATCHES "100% tests passed, 0 tests failed out of 1" OR out MATCHES "Skipped")
  message(FATAL_ERROR "the case did not pass when run (rc ${rc}):\n${out}")
endif()
file(REMOVE_RECURSE ${dir})
message(STATUS "skips are reported as skipped: ${CASE}")
