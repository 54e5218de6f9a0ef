# Runs a test executable with --list and writes one add_test() per case into OUT, which CTest
# includes when it runs. Each case is then its own CTest entry, so a failure names itself.
# A test source that says `ew-fixture: NAME` (in a comment) gets the CTest fixture NAME: the
# server of that name runs while its cases do (see scripts/test-servers). Cases named
# *broker_restart* run alone: they restart the server every test of that fixture shares. Cases
# named *postgresql_files* run alone too: they search PostgreSQL's files for a row version that a
# VACUUM FULL must have left behind, and VACUUM FULL copies a dead version still visible to any
# snapshot older than its deletion, which other tests' sessions (a backend still connecting
# counts for every database) hold at random (docs/encryption.md).
# cmocka's skip() exits 0; its "[  SKIPPED ]" line makes CTest report the case as skipped
# ("Not Run", listed at the end of the run) rather than passed. A skip is a bug of the setup,
# or a case this build cannot run: either way it must show.
execute_process(COMMAND ${TEST_EXE} --list OUTPUT_VARIABLE cases RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${TEST_EXE} --list failed (${rc})")
endif()
file(STRINGS ${TEST_SRC} fixture_lines REGEX "ew-fixture: [a-z_]+")
set(fixtures "")
foreach(l ${fixture_lines})
  string(REGEX MATCH "ew-fixture: ([a-z_]+)" _ "${l}")
  list(APPEND fixtures ${CMAKE_MATCH_1})
endforeach()
string(REPLACE "\n" ";" cases "${cases}")
set(content "")
foreach(c ${cases})
  if(c)
    string(APPEND content "add_test(\"${TEST_NAME}.${c}\" \"${TEST_EXE}\" \"${c}\")\n")
    string(APPEND content "set_tests_properties(\"${TEST_NAME}.${c}\" PROPERTIES TIMEOUT 300 WORKING_DIRECTORY \"${BIN_DIR}\" ENVIRONMENT \"EW_SOURCE_DIR=${SRC_DIR};EW_BUILD_DIR=${BIN_DIR};EW_SERVERS_DIR=${BIN_DIR}/servers\")\n")
    string(APPEND content "set_tests_properties(\"${TEST_NAME}.${c}\" PROPERTIES SKIP_REGULAR_EXPRESSION \"\\\\[  SKIPPED \\\\] \")\n")
    # A case that restarts a shared server must not run beside the others that use it.
    if(c MATCHES "broker_restart|postgresql_files")
      string(APPEND content "set_tests_properties(\"${TEST_NAME}.${c}\" PROPERTIES RUN_SERIAL TRUE)\n")
    endif()
    if(fixtures)
      string(APPEND content "set_tests_properties(\"${TEST_NAME}.${c}\" PROPERTIES FIXTURES_REQUIRED \"${fixtures}\")\n")
    endif()
  endif()
endforeach()
file(WRITE ${OUT} "${content}")
