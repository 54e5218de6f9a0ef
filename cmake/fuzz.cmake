# The fuzz build (make fuzz; docs/fuzzing.md): with EW_FUZZ the whole library is compiled with
# libFuzzer's coverage instrumentation and ASan + UBSan, by clang, and tests/fuzz/CMakeLists.txt
# makes one libFuzzer program per harness. Without it the harnesses only replay their corpora.
option(EW_FUZZ "Build the libFuzzer harnesses of tests/fuzz (needs clang)" OFF)
if(EW_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "EW_FUZZ needs clang: cmake -DCMAKE_C_COMPILER=clang-14 -DEW_FUZZ=ON")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=all -gline-tables-only)
  add_link_options(-fsanitize=address,undefined)
  enable_testing()
endif()
