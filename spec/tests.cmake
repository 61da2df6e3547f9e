# ctest is the one test runner: C unit tests, busted specs and integration suites.
find_program(LUAJIT_BIN luajit REQUIRED)
find_program(BUSTED_BIN busted REQUIRED)
set(NUNCIO_PYTHON /usr/bin/python3 CACHE FILEPATH "Python with Debian's grpcio")

set(NUNCIO_TEST_ENV
  "NUNCIO_CORE=$<TARGET_FILE:nuncio_core>"
  "NUNCIO_BIN=$<TARGET_FILE:nuncio>"
  "NUNCIO_SRC=${CMAKE_SOURCE_DIR}")
if(NUNCIO_SANITIZE)
  # luajit itself is not instrumented: the ASan runtime must come first in the
  # process that ffi.loads the instrumented core. LuaJIT's own allocations are
  # not ours to leak-check there; the nuncio binary runs with full leak checks.
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libasan.so
                  OUTPUT_VARIABLE ASAN_LIB OUTPUT_STRIP_TRAILING_WHITESPACE)
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=libubsan.so
                  OUTPUT_VARIABLE UBSAN_LIB OUTPUT_STRIP_TRAILING_WHITESPACE)
  set(NUNCIO_LUAJIT_ENV "LD_PRELOAD=${ASAN_LIB}:${UBSAN_LIB}" "ASAN_OPTIONS=detect_leaks=0")
  list(APPEND NUNCIO_TEST_ENV "NUNCIO_SANITIZE=1" "ASAN_OPTIONS=detect_leaks=1:abort_on_error=0"
       "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1")
else()
  set(NUNCIO_LUAJIT_ENV "")
endif()

# C unit tests: spec/c/test_<module>.c includes csrc/<module>.c to reach statics.
file(GLOB NUNCIO_C_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/c/test_*.c)
foreach(src ${NUNCIO_C_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/csrc ${EV_INCLUDE})
  target_link_libraries(${name} PRIVATE nuncio_core PkgConfig::LUAJIT)
  add_test(NAME c.${name} COMMAND ${name})
  set_tests_properties(c.${name} PROPERTIES ENVIRONMENT "${NUNCIO_TEST_ENV}")
endforeach()

# busted suites, cheapest first, run by LuaJIT against the real core library.
foreach(suite 01-unit 02-core 03-filters)
  if(EXISTS ${CMAKE_SOURCE_DIR}/spec/${suite})
    add_test(NAME busted.${suite}
      COMMAND ${LUAJIT_BIN} ${BUSTED_BIN} --helper=spec/helper.lua -o utfTerminal spec/${suite}
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(busted.${suite} PROPERTIES ENVIRONMENT "${NUNCIO_TEST_ENV};${NUNCIO_LUAJIT_ENV}")
  endif()
endforeach()

# The user-filter example's own spec, run the way its README tells users to,
# and its configuration validated by the real binary.
add_test(NAME busted.example-custom-filter
  COMMAND ${LUAJIT_BIN} ${BUSTED_BIN} --helper=spec/helper.lua -o utfTerminal examples/custom-filter/spec
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
set_tests_properties(busted.example-custom-filter PROPERTIES ENVIRONMENT "${NUNCIO_TEST_ENV};${NUNCIO_LUAJIT_ENV}")
add_test(NAME example.custom-filter.config COMMAND nuncio -t -c ${CMAKE_SOURCE_DIR}/examples/custom-filter/nuncio.yaml)
set_tests_properties(example.custom-filter.config PROPERTIES ENVIRONMENT "${NUNCIO_TEST_ENV}")

# Integration: the real binary on free ports with real gRPC peers.
file(GLOB NUNCIO_IT_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/04-integration/test_*.py)
foreach(src ${NUNCIO_IT_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_test(NAME integration.${name}
    COMMAND ${NUNCIO_PYTHON} -m unittest -v ${name}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/spec/04-integration)
  set_tests_properties(integration.${name} PROPERTIES ENVIRONMENT "${NUNCIO_TEST_ENV}" TIMEOUT 300)
endforeach()
