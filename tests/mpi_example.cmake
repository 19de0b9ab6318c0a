# ctest -P script: run examples/mpisum under mpirun and compare its stdout
# alone (mpirun forwards stdout and stderr separately, so the progress bar
# on stderr may land anywhere between the results).
# Usage: cmake "-DCMD=mpirun;-np;1;...;mpisum" -P mpi_example.cmake
execute_process(COMMAND ${CMD} OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "exit status ${rc}\n${out}\n${err}")
endif()
if(NOT out STREQUAL "25\n37\n50\n19\n547\n27\n57\n68\n38\n")
  message(FATAL_ERROR "unexpected results:\n${out}\nstderr:\n${err}")
endif()
