# Fails if an object compiled for AVX2/AVX-512 defines weak (COMDAT) symbols that other code may
# share.
#
# An inline function or template instantiated in such a file is emitted as a weak symbol; the
# linker keeps one copy for the whole program, possibly the AVX-512 one, which would then run on
# CPUs without AVX-512 and crash. Weak symbols of an ISA object are therefore allowed only inside
# that ISA's own namespace (kbit::kernels::cpu::avx2 / ::avx512), whose every copy is compiled
# for the same ISA; the exception-handling personality reference is data and harmless.
# Usage: cmake -DNM=<nm> -DOBJECTS="<a.o;b.o;...>" -P CheckIsaObjects.cmake
set(offenders "")
foreach(object IN LISTS OBJECTS)
  if(object MATCHES "avx512")
    set(own_namespace "::avx512::")
  elseif(object MATCHES "avx2")
    set(own_namespace "::avx2::")
  else()
    continue()
  endif()
  execute_process(COMMAND ${NM} -C --defined-only ${object} OUTPUT_VARIABLE symbols
                  RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "nm failed on ${object}")
  endif()
  string(REGEX MATCHALL "[^\n]* [WV] [^\n]*" weak "${symbols}")
  foreach(line IN LISTS weak)
    string(FIND "${line}" "${own_namespace}" in_own_namespace)
    if(in_own_namespace EQUAL -1 AND NOT line MATCHES "DW\\.ref\\.__gxx_personality_v0")
      list(APPEND offenders "${object}: ${line}")
    endif()
  endforeach()
endforeach()
if(offenders)
  list(JOIN offenders "\n" text)
  message(FATAL_ERROR "ISA-specific objects define shared inline code:\n${text}\n"
                      "Move these helpers into the ISA's namespace or an anonymous namespace.")
endif()
message(STATUS "no weak code symbols in the ISA-specific objects")
