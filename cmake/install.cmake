# make install / cmake --install: the public headers, libeventwire.a, libeventwire.so.MAJOR (only
# the public ew_ API exported), ewctl and the services, the ewctl(1) man page, eventwire.pc and
# the CMake package eventwire::eventwire. Included from CMakeLists.txt after the targets exist.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# PIC code that still binds the library's own calls directly, as the static library did.
target_compile_options(eventwire PRIVATE -fno-semantic-interposition)

# ---- the shared library: the static library's objects, whole, behind an export list ----------
# The list is every function the public headers declare (include/eventwire/*.h, macros expanded:
# the catalog's accessors come from events.def), made at build time, so that what a header
# declares is exported and nothing else: not the ew__ internals, not an ew_ function that only a
# header under src/ declares, not a symbol of a library linked in.
file(GLOB EW_PUBLIC_HEADERS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/include/eventwire/*.h
     ${PROJECT_SOURCE_DIR}/include/eventwire/*.def)
set(EW_EXPORT_MAP ${CMAKE_BINARY_DIR}/generated/eventwire.map)
# The list comes from GCC's -aux-info: the compiler when it is GCC, else gcc beside it.
if(CMAKE_C_COMPILER_ID STREQUAL "GNU")
  set(EW_AUX_CC ${CMAKE_C_COMPILER})
else()
  find_program(EW_AUX_CC gcc REQUIRED)
endif()
add_custom_command(OUTPUT ${EW_EXPORT_MAP}
  COMMAND ${CMAKE_COMMAND} -DCC=${EW_AUX_CC} -DINCLUDE=${PROJECT_SOURCE_DIR}/include
          -DOUT=${EW_EXPORT_MAP} -P ${PROJECT_SOURCE_DIR}/cmake/export_map.cmake
  DEPENDS ${EW_PUBLIC_HEADERS} ${PROJECT_SOURCE_DIR}/cmake/export_map.cmake
  COMMENT "Listing the public API for libeventwire.so"
  VERBATIM)
add_custom_target(eventwire_export_map DEPENDS ${EW_EXPORT_MAP})

set(EW_SHARED_STUB ${CMAKE_BINARY_DIR}/generated/ew_shared.c)
file(CONFIGURE OUTPUT ${EW_SHARED_STUB} CONTENT
     "/* libeventwire.so is libeventwire.a's objects, whole (cmake/install.cmake). */
typedef int ew__shared_library_is_the_static_one;
")
add_library(eventwire_shared SHARED ${EW_SHARED_STUB})
add_dependencies(eventwire_shared eventwire_export_map)
if(CMAKE_VERSION VERSION_LESS 3.24)
  target_link_libraries(eventwire_shared PRIVATE -Wl,--whole-archive eventwire -Wl,--no-whole-archive)
else()
  target_link_libraries(eventwire_shared PRIVATE "$<LINK_LIBRARY:WHOLE_ARCHIVE,eventwire>")
endif()
target_link_options(eventwire_shared PRIVATE -Wl,--version-script=${EW_EXPORT_MAP}
                    $<$<NOT:$<OR:$<BOOL:${EW_SANITIZE}>,$<BOOL:${EW_TSAN}>>>:-Wl,--no-undefined>)
set_property(TARGET eventwire_shared APPEND PROPERTY LINK_DEPENDS ${EW_EXPORT_MAP})
target_include_directories(eventwire_shared INTERFACE
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
# libeventwire.so -> libeventwire.so.0 (the SONAME: the major version; no ABI promise before 1.0,
# from then on it changes when the ABI does) -> libeventwire.so.0.1.0
set_target_properties(eventwire_shared PROPERTIES
  OUTPUT_NAME eventwire
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}
  EXPORT_NAME eventwire)

# ---- what gets installed ----------------------------------------------------------------------
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/eventwire DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h" PATTERN "*.def")
install(TARGETS eventwire ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS eventwire_shared EXPORT eventwire-targets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET ewctl)
  install(TARGETS ewctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  install(FILES ${PROJECT_SOURCE_DIR}/docs/ewctl.1 DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
endif()
# The default bus policy, to copy and edit (EVENT_POLICY_FILE; the library has it built in).
install(FILES ${PROJECT_SOURCE_DIR}/docs/bus-policy.conf DESTINATION ${CMAKE_INSTALL_DATADIR}/eventwire)
# ewctl up finds the services beside itself.
if(EW_SERVICES)
  install(TARGETS ${EW_SERVICES} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# What a static link needs besides libeventwire.a: every pkg-config module the library links
# (SQLite, libpq, libmicrohttpd, ..., and the clients of the backends this build has).
set(EW_PC_REQUIRES_PRIVATE "")
set(EW_STATIC_LIBS "")
get_target_property(EW_LINK_LIBS eventwire INTERFACE_LINK_LIBRARIES)
foreach(lib ${EW_LINK_LIBS})
  if(lib MATCHES "^PkgConfig::(.+)$")
    list(APPEND EW_PC_REQUIRES_PRIVATE ${${CMAKE_MATCH_1}_MODULE_NAME})
    list(APPEND EW_STATIC_LIBS ${${CMAKE_MATCH_1}_LIBRARIES})
  endif()
endforeach()
list(JOIN EW_PC_REQUIRES_PRIVATE " " EW_PC_REQUIRES_PRIVATE)

# eventwire.pc, written when installing so that it names the prefix installed into
# (cmake --install build --prefix DIR, make install PREFIX=DIR).
foreach(d LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${d}}")
    set(EW_PC_${d} "${CMAKE_INSTALL_${d}}")
  else()
    set(EW_PC_${d} "\${prefix}/${CMAKE_INSTALL_${d}}")
  endif()
endforeach()
set(EW_PC_PREFIX "@EW_PC_PREFIX@") # filled in when installing
set(EW_PC_IN ${CMAKE_BINARY_DIR}/generated/eventwire.pc.in)
configure_file(${PROJECT_SOURCE_DIR}/cmake/eventwire.pc.in ${EW_PC_IN} @ONLY)
install(CODE "
  file(READ \"${EW_PC_IN}\" pc)
  string(REPLACE \"@EW_PC_PREFIX@\" \"\${CMAKE_INSTALL_PREFIX}\" pc \"\${pc}\")
  file(WRITE \"${CMAKE_BINARY_DIR}/generated/eventwire.pc\" \"\${pc}\")")
install(FILES ${CMAKE_BINARY_DIR}/generated/eventwire.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# The CMake package: find_package(eventwire) gives eventwire::eventwire (the shared library) and
# eventwire::eventwire_static.
set(EW_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/eventwire)
install(EXPORT eventwire-targets NAMESPACE eventwire:: DESTINATION ${EW_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/eventwire-config.cmake.in
  ${CMAKE_BINARY_DIR}/generated/eventwire-config.cmake
  INSTALL_DESTINATION ${EW_CMAKE_DIR}
  PATH_VARS CMAKE_INSTALL_LIBDIR CMAKE_INSTALL_INCLUDEDIR)
# Before 1.0 a minor version may break the ABI: only the same MAJOR.MINOR answers.
write_basic_package_version_file(${CMAKE_BINARY_DIR}/generated/eventwire-config-version.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/generated/eventwire-config.cmake
        ${CMAKE_BINARY_DIR}/generated/eventwire-config-version.cmake
        DESTINATION ${EW_CMAKE_DIR})
