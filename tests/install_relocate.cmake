# ctest -P script: the installed package follows the prefix given at install
# time. Installs a built tree with `cmake --install --prefix` (not configured
# with a prefix), then checks where pkg-config and find_package(pmap) point.
#
# With a relative CMAKE_INSTALL_LIBDIR the installed tree is moved elsewhere
# first, and both must point into the moved tree. With an absolute one the
# libraries and pkg-config files land in that directory whatever the prefix:
# pkg-config must give the install-time prefix for the headers and that
# directory for the libraries (the CMake package is not checked there: CMake
# writes the configure-time prefix into an export installed to an absolute
# directory, as the README says).
#
# Usage: cmake -DBUILD_DIR=b -DWORK=dir [-DCONFIG=c] [-DPKG_CONFIG=pkg-config]
#              [-DPROGRESS=ON] -DGENERATOR=g -DC_COMPILER=cc -P install_relocate.cmake
# or, to configure and build a scratch tree with another libdir first:
#        cmake -DSOURCE_DIR=libpmap -DLIBDIRS='lib/x86_64-linux-gnu|/abs/dir' -DWORK=dir ...
#        (one or more libdirs separated by '|'; an absolute one should lie
#        inside WORK, which is emptied first)

cmake_minimum_required(VERSION 3.16)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}\n${out}${err}")
  endif()
  set(out "${out}" PARENT_SCOPE)
endfunction()

# Fails unless path exists and lies inside root.
function(check_inside root what path)
  get_filename_component(real "${path}" REALPATH)
  get_filename_component(root_real "${root}" REALPATH)
  string(FIND "${real}/" "${root_real}/" at)
  if(NOT at EQUAL 0 OR NOT EXISTS "${real}")
    message(FATAL_ERROR "${what} '${path}' is not inside ${root_real}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")
set(config_args "")
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()

# One scratch tree serves every libdir asked for: it is configured and built
# once, then only reconfigured with the next libdir (nothing recompiles).
string(REPLACE "|" ";" libdirs "${LIBDIRS}")
if(LIBDIR)
  list(APPEND libdirs "${LIBDIR}")
endif()
# Installs BUILD_DIR (configured with CMAKE_INSTALL_LIBDIR = LIBDIR) under
# WORK/sub and checks where pkg-config and find_package(pmap) point.
function(check_install LIBDIR sub)
  set(staged "${WORK}/${sub}/staged")
  run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${staged}" ${config_args})
  # tree: where the headers must be; libtree: where the libraries must be.
  if(IS_ABSOLUTE "${LIBDIR}")
    set(tree "${staged}")
    set(libtree "${LIBDIR}")
  else()
    set(tree "${WORK}/${sub}/moved")
    file(RENAME "${staged}" "${tree}")
    set(libtree "${tree}/${LIBDIR}")
  endif()

  set(modules pmap)
  set(headers pmap.h)
  if(PROGRESS)
    list(APPEND modules pmap_progress)
    list(APPEND headers pmap_progress.h)
  endif()

  # ---- pkg-config ----
  if(PKG_CONFIG)
    file(GLOB_RECURSE pcs "${libtree}/*/pmap.pc")
    list(LENGTH pcs n)
    if(NOT n EQUAL 1)
      message(FATAL_ERROR "expected one installed pmap.pc under ${libtree}, found: ${pcs}")
    endif()
    get_filename_component(pcdir "${pcs}" DIRECTORY)
    # Only the installed files, whatever else the machine has installed.
    set(ENV{PKG_CONFIG_PATH} "${pcdir}")
    set(ENV{PKG_CONFIG_LIBDIR} "${pcdir}")
    unset(ENV{PKG_CONFIG_SYSROOT_DIR})
    run("${PKG_CONFIG}" --cflags --libs ${modules})
    separate_arguments(flags UNIX_COMMAND "${out}")
    set(incs "")
    set(libdirs "")
    set(libs "")
    foreach(f IN LISTS flags)
      if(f MATCHES "^-I(.+)")
        list(APPEND incs "${CMAKE_MATCH_1}")
      elseif(f MATCHES "^-L(.+)")
        list(APPEND libdirs "${CMAKE_MATCH_1}")
      elseif(f MATCHES "^-l(.+)")
        list(APPEND libs "${CMAKE_MATCH_1}")
      endif()
    endforeach()
    if(NOT incs OR NOT libdirs)
      message(FATAL_ERROR "pkg-config gave no -I or no -L: ${out}")
    endif()
    foreach(d IN LISTS incs)
      check_inside("${tree}" "pkg-config -I" "${d}")
    endforeach()
    foreach(d IN LISTS libdirs)
      check_inside("${libtree}" "pkg-config -L" "${d}")
    endforeach()
    foreach(h IN LISTS headers)
      list(GET incs 0 d)
      check_inside("${tree}" "header ${h}" "${d}/${h}")
    endforeach()
    foreach(m IN LISTS modules)
      if(NOT m IN_LIST libs)
        message(FATAL_ERROR "pkg-config --libs lacks -l${m}: ${out}")
      endif()
      list(GET libdirs 0 d)
      file(GLOB found "${d}/lib${m}.*")
      if(NOT found)
        message(FATAL_ERROR "no lib${m} in pkg-config's -L${d}")
      endif()
    endforeach()
    message(STATUS "pkg-config ${modules}: ${out}")
  else()
    message(STATUS "pkg-config not found: only the CMake package is checked")
  endif()

  if(IS_ABSOLUTE "${LIBDIR}")
    return()
  endif()

  # ---- find_package(pmap) from the moved tree ----
  set(consumer "${WORK}/${sub}/consumer")
  set(targets pmap::pmap pmap::pmap_static)
  if(PROGRESS)
    list(APPEND targets pmap::progress pmap::progress_static)
  endif()
  file(WRITE "${consumer}/CMakeLists.txt" "
  cmake_minimum_required(VERSION 3.16)
  project(consumer LANGUAGES C)
  find_package(pmap 1 REQUIRED CONFIG)
  foreach(t ${targets})
    get_target_property(loc \${t} LOCATION)
    get_target_property(inc \${t} INTERFACE_INCLUDE_DIRECTORIES)
    message(STATUS \"pmap-check \${t} \${loc}\")
    foreach(d IN LISTS inc)
      message(STATUS \"pmap-check \${t} \${d}\")
    endforeach()
  endforeach()
  ")
  run("${CMAKE_COMMAND}" -S "${consumer}" -B "${consumer}/build" -G "${GENERATOR}"
      "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_PREFIX_PATH=${tree}"
      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
  string(REGEX MATCHALL "pmap-check [^\n]*" checks "${out}")
  list(LENGTH checks n)
  list(LENGTH targets nt)
  if(n LESS nt)
    message(FATAL_ERROR "find_package(pmap) did not report its targets:\n${out}")
  endif()
  foreach(c IN LISTS checks)
    string(REGEX REPLACE "^pmap-check ([^ ]+) (.*)$" "\\1;\\2" c "${c}")
    list(GET c 0 t)
    list(GET c 1 p)
    check_inside("${tree}" "find_package(pmap): ${t}" "${p}")
  endforeach()
  message(STATUS "find_package(pmap): ${nt} targets, all inside the moved tree")
endfunction()

if(NOT libdirs)
  check_install("" k0)
  return()
endif()
set(BUILD_DIR "${WORK}/build")
# Only the libraries: what the install rules need, built quickly, in a
# configuration of its own (the caller's CONFIG is that of its own build).
set(config_args --config Debug)
set(k 0)
foreach(libdir IN LISTS libdirs)
  if(k EQUAL 0)
    run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BUILD_DIR}" -G "${GENERATOR}"
        "-DCMAKE_C_COMPILER=${C_COMPILER}" -DCMAKE_BUILD_TYPE=Debug
        "-DCMAKE_C_FLAGS_DEBUG=-O0" "-DCMAKE_INSTALL_LIBDIR=${libdir}" "-DPMAP_PROGRESS=${PROGRESS}"
        -DPMAP_BUILD_TESTS=OFF -DPMAP_BUILD_EXAMPLES=OFF -DPMAP_BUILD_BENCH=OFF
        -DPMAP_MPI=OFF)
  else()
    run("${CMAKE_COMMAND}" "-DCMAKE_INSTALL_LIBDIR=${libdir}" "${BUILD_DIR}")
  endif()
  # Only the install layout is checked here, not the code: no debug
  # information (CMAKE_C_FLAGS_DEBUG above), and both cores.
  run("${CMAKE_COMMAND}" --build "${BUILD_DIR}" ${config_args} --parallel 2)
  check_install("${libdir}" "k${k}")
  math(EXPR k "${k} + 1")
endforeach()
