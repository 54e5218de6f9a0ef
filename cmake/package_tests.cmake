# The checks of what users get, in make test (plain build only: the sanitizer builds' library is
# not one to install): the formatting of the tree, and tests/package/check.sh on the installed
# package, its steps after package.install as CTest fixtures.
add_test(NAME format COMMAND ${PROJECT_SOURCE_DIR}/scripts/check-format ${PROJECT_SOURCE_DIR})
add_test(NAME package.install
         COMMAND ${PROJECT_SOURCE_DIR}/tests/package/check.sh install ${PROJECT_SOURCE_DIR} ${CMAKE_BINARY_DIR})
set_tests_properties(package.install PROPERTIES FIXTURES_SETUP package TIMEOUT 120)
foreach(step exports headers pkgconfig cmake programs)
  add_test(NAME package.${step}
           COMMAND ${PROJECT_SOURCE_DIR}/tests/package/check.sh ${step} ${PROJECT_SOURCE_DIR} ${CMAKE_BINARY_DIR})
  set_tests_properties(package.${step} PROPERTIES FIXTURES_REQUIRED package TIMEOUT 300
                       ENVIRONMENT "CC=${CMAKE_C_COMPILER};AUX_CC=${EW_AUX_CC}")
endforeach()
