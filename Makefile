# nuncio: thin wrapper over CMake/ctest. `make run` and `make test` are the two commands.
BUILD      ?= build
ASAN_BUILD ?= build-asan
JOBS       ?= $(shell nproc)
PYTHON     := /usr/bin/python3

# Debian 12 packages the build, the tests and the example need.
DEB_PACKAGES := build-essential cmake pkg-config libev-dev libnghttp2-dev libyaml-dev libhttp-parser-dev libmbedtls-dev \
	luajit2 libluajit2-5.1-dev lua-busted python3-grpcio python3-grpc-tools python3-protobuf \
	nghttp2-client curl openssl chromium python3-yaml python3-prometheus-client
# Not from Debian here: node (>= 20) and npm, for the gRPC-Web example page and its browser test.

.PHONY: all deps build run test test-plain test-asan asan clean example-stubs grpc-web-example bench bench-deps profile \
	fuzz fuzz-ci fuzz-deps fuzz-build

all: build

# Installs only what is missing; CI has no standard input, so never prompt.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends $$missing; \
	else echo "make deps: all Debian packages present"; fi

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

example-stubs: deps
	$(PYTHON) examples/grpc-greeter/gen_stubs.py

# Starts the Greeter example server and nuncio in the foreground on conf/nuncio.yaml.
run: build example-stubs
	@examples/grpc-greeter/run.sh $(BUILD)/nuncio conf/nuncio.yaml

# The gRPC-Web example page (examples/grpc-web/dist), built when missing or outdated:
# `npm ci` + `npm run build` there. The browser test loads it in Debian's chromium.
grpc-web-example:
	@$(MAKE) --no-print-directory -C examples/grpc-web

# Every suite, then every suite again under ASan + UBSan (its summary prints last).
test: build asan grpc-web-example
	cd $(BUILD) && ctest --output-on-failure -j 2
	cd $(ASAN_BUILD) && ctest --output-on-failure -j 2

asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DNUNCIO_SANITIZE=ON >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)

test-plain: build grpc-web-example
	cd $(BUILD) && ctest --output-on-failure -j 2

# The whole suite under AddressSanitizer + UBSan only.
test-asan: asan grpc-web-example
	cd $(ASAN_BUILD) && ctest --output-on-failure -j 2

# The peers the benchmark runs beside nuncio (not needed by the tests).
BENCH_PACKAGES := nginx libnginx-mod-http-lua haproxy nghttp2-proxy nghttp2-client gnuplot-nox openssl linux-perf valgrind

bench-deps:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(BENCH_PACKAGES)"

# nuncio beside nginx, HAProxy and nghttpx in one run; writes bench/RESULTS.md and bench/results.png.
bench: build bench-deps
	$(PYTHON) bench/run $(BENCH_ARGS)

# Where nuncio's time goes per request (perf, else callgrind): bench/profile.
profile: build bench-deps
	bench/profile $(PROFILE_ARGS)

# Fuzzing (spec/fuzz/README.md): libFuzzer harnesses built with Debian's clang
# in $(FUZZ_BUILD). `make fuzz` replays every seed corpus, then runs each
# harness for FUZZ_SECONDS; `make fuzz-ci` does the same for 30 s each.
# New crash inputs land in $(FUZZ_BUILD)/crashes/.
FUZZ_BUILD    ?= build-fuzz
FUZZ_SECONDS  ?= 60
FUZZERS       ?= h2s h1s grpc_web authority yaml grpc_timeout
FUZZ_PACKAGES := clang libclang-rt-14-dev llvm-14

fuzz-deps:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(FUZZ_PACKAGES)"

fuzz-build: deps fuzz-deps
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DNUNCIO_FUZZ=ON >/dev/null
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzzers

fuzz: fuzz-build
	spec/fuzz/run $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZERS)

fuzz-ci: fuzz-build
	spec/fuzz/run $(FUZZ_BUILD) 30 $(FUZZERS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
