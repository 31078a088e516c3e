# nhid — build, run, test. See README.md. Targets:
#   make / make all   build nhid, nhictl, nhi-agent (build/rel/)
#   make run          deps, build, dev deployment under var/dev/, start nhid on 127.0.0.1:8443
#   make check        deps, ASan+UBSan test build, unit + integration + fuzz-corpus + leak checks
#   make bench        benchmarks (print their figures)
#   make fuzz         libFuzzer (clang) over every target, FUZZ_SECONDS each
.DEFAULT_GOAL := all
SHELL := /bin/bash

CC      ?= gcc
PKGS    := p11-kit-1 libssl libcrypto jansson libjwt sqlite3 libevent libevent_openssl libevent_pthreads
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
MBED_LIBS  := -lmbedtls -lmbedx509 -lmbedcrypto -lhttp_parser

WARN    := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wvla -Wno-missing-field-initializers -Wno-format-truncation
BASE_CFLAGS := -std=gnu11 -D_GNU_SOURCE $(WARN) -g -fPIE -I. $(PKG_CFLAGS)
REL_CFLAGS  := $(BASE_CFLAGS) -O2 -D_FORTIFY_SOURCE=2 -fstack-protector-strong
TEST_CFLAGS := $(BASE_CFLAGS) -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=undefined -DNHI_TEST_BUILD
LDFLAGS_REL := -pie -Wl,-z,relro,-z,now
LDFLAGS_TEST := -fsanitize=address,undefined
LIBS    := $(PKG_LIBS) -lseccomp -lpthread -lm
# check/run/bench build with one compiler per core (JOBS=1 for a serial build)
JOBS    ?= $(shell nproc 2>/dev/null || echo 2)

# sources: every module's .c files form libnhi; programs add their mains
LIB_SRCS    := $(wildcard common/*.c hsm/*.c identity/*.c tokens/*.c) \
               $(filter-out server/main.c,$(wildcard server/*.c))
NHID_SRCS   := server/main.c
NHICTL_SRCS := provisioning/nhictl.c
PROV_SRCS   := $(filter-out provisioning/nhictl.c,$(wildcard provisioning/*.c))
AGENT_LIB_SRCS := $(filter-out agent/main.c,$(wildcard agent/*.c))
AGENT_SRCS  := $(wildcard agent/main.c)
UNIT_SRCS   := $(wildcard tests/unit/test_*.c)
FUZZ_SRCS   := $(filter-out tests/fuzz/driver.c,$(wildcard tests/fuzz/*.c))
BENCH_SRCS  := $(wildcard bench/*.c)

REL  := build/rel
TST  := build/test
objs = $(patsubst %.c,$(1)/%.o,$(2))

.PHONY: all run check bench fuzz deps-run deps-check deps-fuzz deps-bench clean dev unit integration

PROGS_REL  := $(REL)/nhictl $(if $(wildcard server/main.c),$(REL)/nhid) $(if $(AGENT_SRCS),$(REL)/nhi-agent)
PROGS_TEST := $(TST)/nhictl $(if $(wildcard server/main.c),$(TST)/nhid) $(if $(AGENT_SRCS),$(TST)/nhi-agent)
all: $(PROGS_REL)

$(REL)/%.o: %.c $(wildcard */*.h)
	@mkdir -p $(dir $@)
	$(CC) $(REL_CFLAGS) -c $< -o $@
$(TST)/%.o: %.c $(wildcard */*.h tests/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(TEST_CFLAGS) -c $< -o $@

$(REL)/libnhi.a: $(call objs,$(REL),$(LIB_SRCS))
	@rm -f $@; ar rcs $@ $^
$(TST)/libnhi.a: $(call objs,$(TST),$(LIB_SRCS))
	@rm -f $@; ar rcs $@ $^
$(REL)/libnhictl.a: $(call objs,$(REL),$(PROV_SRCS))
	@rm -f $@; ar rcs $@ $^
$(TST)/libnhictl.a: $(call objs,$(TST),$(PROV_SRCS))
	@rm -f $@; ar rcs $@ $^
$(REL)/libnhiagent.a: $(call objs,$(REL),$(AGENT_LIB_SRCS))
	@rm -f $@; ar rcs $@ $^
$(TST)/libnhiagent.a: $(call objs,$(TST),$(AGENT_LIB_SRCS))
	@rm -f $@; ar rcs $@ $^

$(REL)/nhictl: $(call objs,$(REL),$(NHICTL_SRCS)) $(REL)/libnhictl.a $(REL)/libnhi.a
	$(CC) $(LDFLAGS_REL) $^ $(LIBS) -o $@
$(TST)/nhictl: $(call objs,$(TST),$(NHICTL_SRCS)) $(TST)/libnhictl.a $(TST)/libnhi.a
	$(CC) $(LDFLAGS_TEST) $^ $(LIBS) -o $@
$(REL)/nhid: $(call objs,$(REL),$(NHID_SRCS)) $(REL)/libnhi.a
	$(CC) $(LDFLAGS_REL) $^ $(LIBS) -o $@
$(TST)/nhid: $(call objs,$(TST),$(NHID_SRCS)) $(TST)/libnhi.a
	$(CC) $(LDFLAGS_TEST) $^ $(LIBS) -o $@
$(REL)/nhi-agent: $(call objs,$(REL),$(AGENT_SRCS)) $(REL)/libnhiagent.a
	$(CC) $(LDFLAGS_REL) $^ $(MBED_LIBS) -ljansson -o $@
$(TST)/nhi-agent: $(call objs,$(TST),$(AGENT_SRCS)) $(TST)/libnhiagent.a
	$(CC) $(LDFLAGS_TEST) $^ $(MBED_LIBS) -ljansson -o $@

# unit tests: one cmocka binary per tests/unit/test_<module>.c
$(TST)/tests/unit/%: $(TST)/tests/unit/%.o $(TST)/libnhictl.a $(TST)/libnhi.a $(if $(AGENT_LIB_SRCS),$(TST)/libnhiagent.a)
	$(CC) $(LDFLAGS_TEST) $^ $(LIBS) $(MBED_LIBS) -lcmocka -o $@
UNIT_BINS := $(patsubst %.c,$(TST)/%,$(UNIT_SRCS))

# fuzz targets: gcc + stdin/file driver for make check; clang libFuzzer for make fuzz
$(TST)/fuzz/%: $(TST)/tests/fuzz/%.o $(TST)/tests/fuzz/driver.o $(TST)/libnhictl.a $(TST)/libnhi.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_TEST) $^ $(LIBS) $(MBED_LIBS) -ljansson -o $@
# the agent's fuzz target compiles the agent's sources in (the agent links no libnhi)
$(TST)/tests/fuzz/agent_response.o: $(wildcard agent/*.c agent/*.h)
FUZZ_BINS := $(patsubst tests/fuzz/%.c,$(TST)/fuzz/%,$(FUZZ_SRCS))

FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
build/fuzz/%: tests/fuzz/%.c $(LIB_SRCS) $(PROV_SRCS) $(wildcard agent/*.c agent/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(BASE_CFLAGS) -Wno-unknown-warning-option -Wno-unused-command-line-argument -O1 \
	  -fsanitize=fuzzer,address,undefined -DNHI_TEST_BUILD $< $(PROV_SRCS) $(LIB_SRCS) $(LIBS) $(MBED_LIBS) -ljansson -o $@
fuzz: deps-fuzz $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRCS))
	@for t in $(patsubst tests/fuzz/%.c,%,$(FUZZ_SRCS)); do \
	  echo "== fuzz $$t for $(FUZZ_SECONDS)s"; mkdir -p build/fuzz/corpus-$$t; \
	  build/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 build/fuzz/corpus-$$t tests/fuzz/corpus/$$t \
	    || exit 1; done

BENCH_BINS := $(patsubst bench/%.c,$(REL)/bench/%,$(BENCH_SRCS))
$(REL)/bench/%: $(REL)/bench/%.o $(REL)/libnhi.a
	$(CC) $(LDFLAGS_REL) $^ $(LIBS) -o $@

deps-run:   ; @scripts/deps.sh run
deps-check: ; @scripts/deps.sh check
deps-fuzz:  ; @scripts/deps.sh fuzz
deps-bench: ; @scripts/deps.sh bench

test-build: $(PROGS_TEST) $(UNIT_BINS) $(FUZZ_BINS) $(PROGS_REL)
check: deps-check
	@$(MAKE) --no-print-directory -j$(JOBS) test-build
	@TST_DIR=$(TST) REL_DIR=$(REL) tests/run.sh

run: deps-run
	@$(MAKE) --no-print-directory -j$(JOBS) all
	@scripts/dev-deploy.sh
	@scripts/dev-run.sh

bench: deps-bench
	@$(MAKE) --no-print-directory -j$(JOBS) all $(BENCH_BINS)
	@bench/run.sh

clean:
	rm -rf build

# offline release bundle (docs/airgap.md): RELEASE_KEY=release.key.pem make bundle
.PHONY: bundle
bundle:
	@scripts/bundle.sh
