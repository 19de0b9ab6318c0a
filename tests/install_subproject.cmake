# ctest -P script: a parent project that embeds libpmap with add_subdirectory()
# installs nothing of libpmap (PMAP_INSTALL is off below the top level).
# Configures a scratch parent that installs one file of its own and runs its
# install without building: any libpmap install rule would either fail (its
# files are not built) or leave something besides the parent's file.
# Usage: cmake -DSOURCE_DIR=libpmap -DWORK=dir -DGENERATOR=g -DC_COMPILER=cc
#              -P install_subproject.cmake

cmake_minimum_required(VERSION 3.16)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGN}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}\n${out}${err}")
  endif()
endfunction()

set(parent "${WORK}/parent")
set(prefix "${WORK}/prefix")
file(REMOVE_RECURSE "${WORK}")
file(WRITE "${parent}/CMakeLists.txt" "
cmake_minimum_required(VERSION 3.16)
project(parent LANGUAGES C)
add_subdirectory(\"${SOURCE_DIR}\" pmap)
if(PMAP_INSTALL)
  message(FATAL_ERROR \"PMAP_INSTALL is on in a subproject\")
endif()
install(FILES CMakeLists.txt DESTINATION share/parent)
")
run("${CMAKE_COMMAND}" -S "${parent}" -B "${parent}/build" -G "${GENERATOR}"
    "-DCMAKE_C_COMPILER=${C_COMPILER}")
run("${CMAKE_COMMAND}" --install "${parent}/build" --prefix "${prefix}")

file(GLOB_RECURSE installed LIST_DIRECTORIES false RELATIVE "${prefix}" "${prefix}/*")
if(NOT installed STREQUAL "share/parent/CMakeLists.txt")
  message(FATAL_ERROR "the parent's install holds more than its own file: ${installed}")
endif()
message(STATUS "parent install: ${installed} only")
