# Included by llama.cpp's CMake project (CMAKE_ARGS: -DCMAKE_PROJECT_llama.cpp_INCLUDE=<this
# file>) when llama-cpp-python is compiled. llama-cpp-python forces llama.cpp's "common" library
# (argument parsing, chat templates in C++, an HTTP client: about half of what is compiled) on,
# but its Python package loads only libllama and libggml*, so it is switched off here again.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)
