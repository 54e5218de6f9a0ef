# eventwire — the commands a user types. CMake does the building; this file only names the steps.
#   make run     set up, build and run the system
#   make test    set up, build, and run every test, plainly and under ASan + UBSan, and the
#                threaded ones under ThreadSanitizer, and fuzz each harness of tests/fuzz for 5 s
#   make install build and install into PREFIX (default /usr/local; DESTDIR works too)
#   make bench   build optimised and run the benchmarks (never part of make test)
#   make fuzz    build the fuzz harnesses with clang and run each for FUZZ_SECONDS (default 300)
#   make docs    write docs/api.md, the API reference, from the public headers' comments
#   make soak    the chaos soak on every backend for SOAK_SECONDS (default 600) and the fault
#                tests (never part of make test, which runs a 60-second soak on sqlite and redis);
#                make soak-asan runs them on the ASan + UBSan build

JOBS  ?= $(shell nproc 2>/dev/null || echo 2)
BUILD ?= build
ASAN  ?= build-asan
TSAN  ?= build-tsan
PREFIX ?= /usr/local
BENCH ?= build-bench
FUZZ  ?= build-fuzz
FUZZ_SECONDS ?= 300

.PHONY: all setup build run install test test-plain test-asan test-tsan test-fuzz fuzz bench format format-check \
        docs clean soak soak-asan

all: build

setup:
	@bash scripts/setup

build: setup
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: build
	@bash scripts/run

install: build
	@cmake --install $(BUILD) --prefix $(PREFIX)

test: setup test-plain test-asan test-tsan test-fuzz

test-plain:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan:
	@cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DEW_SANITIZE=ON -DEW_BENCH=OFF >/dev/null
	@cmake --build $(ASAN) -j $(JOBS)
	@cd $(ASAN) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j $(JOBS)

# The tests of the threaded library (core, catalog, store, saga, dispatcher, memory, SQLite, Redis
# and RabbitMQ backends; CMakeLists.txt picks them) under ThreadSanitizer. Any report fails its test.
# Left out there: the Kafka fixture (no Kafka test is built), and two cases whose premise is speed,
# which TSan's 5-15x slowdown breaks: a 100k-member JSON document parsed within a second, and a
# consumer process killed mid-stream, which needs publishing 400 events to outrun one consumer.
# GCC 12's TSan cannot map its shadow memory when the kernel randomises mmap with more than 28
# bits (newer hosts: "unexpected memory mapping"); there the run goes through setarch -R, without
# address randomisation, where the system allows it. Only there: RabbitMQ's fixture sometimes
# failed to start under setarch -R.
NO_ASLR := $(shell [ "$$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0)" -gt 28 ] && \
             setarch $$(uname -m) -R true 2>/dev/null && echo setarch $$(uname -m) -R)
TSAN_SKIP ?= fixture\.kafka|test_100k_member_object_with_duplicate_at_end_is_fast|cf_consumer_killed_and_restarted
test-tsan:
	@cmake -S . -B $(TSAN) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEW_TSAN=ON -DEW_BENCH=OFF >/dev/null
	@cmake --build $(TSAN) -j $(JOBS) --target ew_tests
	@cd $(TSAN) && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
		$(NO_ASLR) ctest --output-on-failure -j $(JOBS) -E '$(TSAN_SKIP)'

# Each harness of tests/fuzz runs for FUZZ_SECONDS; make test runs them for 5 s each.
fuzz: setup
	@cmake -S . -B $(FUZZ) -DCMAKE_C_COMPILER=clang-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEW_FUZZ=ON \
		-DEW_TESTS=OFF -DEW_BENCH=OFF >/dev/null
	@cmake --build $(FUZZ) -j $(JOBS) --target fuzz
	@cd $(FUZZ) && FUZZ_SECONDS=$(FUZZ_SECONDS) ctest --output-on-failure -j $(JOBS)

test-fuzz:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=5

bench: setup
	@cmake -S . -B $(BENCH) -DCMAKE_BUILD_TYPE=Release -DEW_TESTS=OFF >/dev/null
	@cmake --build $(BENCH) -j $(JOBS)
	@bash scripts/bench $(BENCH)

# docs/api.md: scripts/api-doc reads include/eventwire/*.h (the test docs.api fails when the page
# is out of step with them)
docs:
	@/usr/bin/python3 scripts/api-doc --write
	@echo "docs/api.md written from include/eventwire/*.h"

SOAK_SECONDS ?= 600
soak: build
	@SOAK_SECONDS=$(SOAK_SECONDS) bash scripts/soak $(BUILD)

soak-asan: setup
	@cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DEW_SANITIZE=ON -DEW_BENCH=OFF >/dev/null
	@cmake --build $(ASAN) -j $(JOBS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		SOAK_SECONDS=$(SOAK_SECONDS) bash scripts/soak $(ASAN)

format:
	@clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	@bash scripts/check-format

clean:
	rm -rf $(BUILD) $(ASAN) $(TSAN) $(BENCH) $(FUZZ)
