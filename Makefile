# cbimg - top-level Makefile (GNU make; no autotools, no cmake).
#   make            build libcbimg.a and the cbimg tool
#   make check      unit tests (cmocka) + end-to-end tests (loop devices when root)
#   make check-unit / check-e2e
#   make asan       build and run all tests under ASan+UBSan (build-asan/)
#   make check-fuzz replay the fuzz corpus (tests/fuzz/corpus) under ASan+UBSan (part of check)
#   make fuzz       run every libFuzzer target (clang) for FUZZ_TIME seconds (tests/fuzz/README.md)
#   make valgrind   unit tests and a file backup/restore under valgrind
#   make deps       apt-get install the Debian packages the build needs, when missing
#   make demo       full backup, changes, incremental, restore, verify on a generated ext4 disk
#   make bench      benchmark against peers (not part of check)
#   make install    PREFIX=/usr/local DESTDIR=  (program, library, header, man pages, docs,
#                   bash and zsh completion)
#   make uninstall  same PREFIX and DESTDIR: removes exactly what install put there
PREFIX ?= /usr/local
DESTDIR ?=
BUILD ?= build
CC ?= cc
PKGS := libzstd libxxhash libcrypto sqlite3 mount blkid ext2fs com_err fuse3 libtracefs
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)
WARN := -Wall -Wextra -Werror -Wshadow -Wpointer-arith -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
OPT ?= -O2 -g
# -fPIC: the nbdkit plugin (a shared object) links the same library objects.
CFLAGS_ALL := -std=gnu11 $(OPT) $(WARN) -fPIC -D_FILE_OFFSET_BITS=64 -Iinclude $(PKG_CFLAGS) $(EXTRA_CFLAGS) $(CFLAGS)
LDLIBS_ALL := $(PKG_LIBS) -lpthread $(EXTRA_LDFLAGS) $(LDFLAGS)
# libcurl (S3 destinations, src/lib/s3.c) when installed (make deps: libcurl4-openssl-dev); without
# it, cbimg builds and an s3:// DEST is refused with a message.
CURL_OK := $(shell pkg-config --exists libcurl 2>/dev/null && echo 1)
CFLAGS_ALL += $(if $(CURL_OK),-DCBI_HAVE_CURL $(shell pkg-config --cflags libcurl))
# (loaded with dlopen at the first S3 DEST, not linked: src/lib/s3.c)
LDLIBS_ALL += $(if $(CURL_OK),-ldl)

LIB_SRC := $(sort $(wildcard src/lib/*.c))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
# LD_PRELOAD fault injection for tests/e2e/t_fault.sh (tests/fault/faultshim.c). Never built with
# the sanitizers; in an ASan build without its allocation functions (ASan's allocator owns them).
FAULT_SHIM := $(BUILD)/tests/libcbifault.so
FAULT_CFLAGS := -std=gnu11 -O2 -g $(WARN) -fPIC -shared $(if $(findstring sanitize=address,$(EXTRA_CFLAGS)),-DFAULT_NO_MALLOC)

DEB_PKGS := build-essential pkg-config libzstd-dev libxxhash-dev libssl-dev libsqlite3-dev libcmocka-dev libbsd-dev \
	libmount-dev libblkid-dev libext2fs-dev comerr-dev e2fsprogs util-linux valgrind zstd xxhash jq dosfstools fusefat exfatprogs exfat-fuse groff-base zsh \
	clang libclang-rt-14-dev libfuse3-dev fuse3 nbdkit nbdkit-plugin-dev libnbd-bin xfsprogs btrfs-progs gdisk \
	libtracefs-dev libtraceevent-dev libcurl4-openssl-dev
# The S3 tests' server (tests/s3/rgw.sh: Ceph's RADOS Gateway). Installed by `make deps` without
# recommends (with them apt pulls in the whole of Ceph); about a minute. CBIMG_NO_S3=1 skips them,
# and the S3 tests then skip visibly.
DEB_PKGS_S3 := ceph-mon ceph-osd radosgw ceph-common curl time

# The nbdkit plugin (nbdkit cbimg point=FILE), when nbdkit-plugin-dev is installed; not in sanitized
# builds (nbdkit itself is not sanitized: the runtime would not load first). Installed where
# nbdkit looks for plugins (`nbdkit --dump-config`: plugindir).
NBDKIT_PLUGIN := $(if $(findstring sanitize,$(EXTRA_CFLAGS)),,$(if $(wildcard /usr/include/nbdkit-plugin.h),$(BUILD)/nbdkit-cbimg-plugin.so))
NBDKIT_PLUGINDIR ?= $(shell nbdkit --dump-config 2>/dev/null | sed -n 's/^plugindir=//p')

.PHONY: all test check check-unit check-e2e check-fuzz fuzz-replay fuzz fuzz-build fuzz-bins fuzz-seeds asan valgrind deps demo \
	bench install uninstall clean vectors
all: $(BUILD)/cbimg $(NBDKIT_PLUGIN)

# The CLI sees only the public header; the library and its unit tests see src/lib too.
$(BUILD)/src/lib/%.o: src/lib/%.c $(wildcard include/*.h src/lib/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc/lib -c $< -o $@

$(BUILD)/src/cli/%.o: src/cli/%.c $(wildcard include/*.h src/cli/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/libcbimg.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

# The CLI alone uses libbsd (readpassphrase(3)), through <bsd/...> headers:
# no pkg-config overlay cflags.
CLI_LIBS := -lbsd

$(BUILD)/cbimg: $(CLI_OBJ) $(BUILD)/libcbimg.a
	$(CC) $(CFLAGS_ALL) -o $@ $(CLI_OBJ) $(BUILD)/libcbimg.a $(LDLIBS_ALL) $(CLI_LIBS)

# The library's symbols stay inside the plugin (--exclude-libs): it exports only nbdkit's entry.
$(BUILD)/nbdkit-cbimg-plugin.so: src/nbdkit/cbimg-plugin.c include/cbimg.h $(BUILD)/libcbimg.a
	$(CC) $(CFLAGS_ALL) -shared -Wl,--exclude-libs,ALL -Wl,--as-needed -o $@ $< $(BUILD)/libcbimg.a $(LDLIBS_ALL)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/testutil.h $(BUILD)/libcbimg.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc/lib -Itests/unit -o $@ $< $(BUILD)/libcbimg.a $(LDLIBS_ALL) $(CMOCKA_LIBS)

check-unit: $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do echo "== $$t"; CBIMG_VECTORS=$(CURDIR)/format/vectors $$t || fail=1; done; \
	 [ $$fail = 0 ] || { echo "unit tests FAILED"; exit 1; }

$(FAULT_SHIM): tests/fault/faultshim.c
	@mkdir -p $(dir $@)
	$(CC) $(FAULT_CFLAGS) -o $@ $< -ldl

# tests/e2e/t_wtrace.sh drives the write tracer (src/lib/wtrace.c) through this helper; it finds it
# beside cbimg, in $(BUILD)/tests.
WTRACE_HELPER := $(BUILD)/tests/wtrace_helper
$(WTRACE_HELPER): tests/e2e/wtrace_helper.c src/lib/wtrace.h $(BUILD)/libcbimg.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc/lib -o $@ $< $(BUILD)/libcbimg.a $(LDLIBS_ALL)

check-e2e: $(BUILD)/cbimg $(FAULT_SHIM) $(NBDKIT_PLUGIN) $(WTRACE_HELPER)
	CBIMG=$(CURDIR)/$(BUILD)/cbimg CBIMG_FAULT_SHIM=$(CURDIR)/$(FAULT_SHIM) \
	  CBIMG_NBDKIT_PLUGIN=$(if $(NBDKIT_PLUGIN),$(CURDIR)/$(NBDKIT_PLUGIN)) E2E_SKIP="$(E2E_SKIP)" \
	  bash tests/e2e/run.sh

check: all check-unit check-e2e check-fuzz
	bash tests/check-cycles.sh $(BUILD)

ASAN_VARS = BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined"

asan:
	$(MAKE) $(ASAN_VARS) check

# The README's test command: every test with ASan+UBSan, and every test of
# the plain build but the fault-injection, kill and damage sweeps, which
# re-run the same paths hundreds of times: they run once, in the ASan pass,
# where their error paths are also checked for memory errors (this halves
# the sweeps' share of CI's time).
SWEEPS = t_fault t_fault_ops t_kill_sweep t_verdicts
test:
	$(MAKE) check E2E_SKIP="$(SWEEPS)"
	$(MAKE) asan

# ------------------------------------------------------------------ fuzzing
# One target per parser, tests/fuzz/fuzz_<t>.c (an LLVMFuzzerTestOneInput),
# seeds in tests/fuzz/corpus/<t>/. check-fuzz replays the seeds (and every
# crash found so far, kept there) with a plain main() (tests/fuzz/replay.c)
# under ASan+UBSan, with any compiler, in the ASan build; `make fuzz` needs
# clang's libFuzzer and builds build-fuzz/.
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_CC ?= clang
FUZZ_TIME ?= 60
FUZZ_JOBS ?= 1
FUZZ_SRC_DEPS := tests/fuzz/fuzz.h $(wildcard include/*.h src/lib/*.h)

$(BUILD)/fuzz/replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c $(FUZZ_SRC_DEPS) $(BUILD)/libcbimg.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc/lib -Itests/fuzz -o $@ $< tests/fuzz/replay.c $(BUILD)/libcbimg.a $(LDLIBS_ALL)

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_SRC_DEPS) $(BUILD)/libcbimg.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc/lib -Itests/fuzz -o $@ $< $(BUILD)/libcbimg.a $(LDLIBS_ALL)

$(BUILD)/fuzz/gen_seeds: tests/fuzz/gen_seeds.c $(FUZZ_SRC_DEPS) $(BUILD)/libcbimg.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Isrc/lib -Itests/fuzz -o $@ $< $(BUILD)/libcbimg.a $(LDLIBS_ALL)

fuzz-replay: $(FUZZ_TARGETS:%=$(BUILD)/fuzz/replay_%)
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  $(BUILD)/fuzz/replay_$$t tests/fuzz/corpus/$$t || { echo "fuzz corpus replay FAILED: $$t"; fail=1; }; \
	done; [ $$fail = 0 ]

check-fuzz:
	$(MAKE) $(ASAN_VARS) fuzz-replay

# Regenerate the generated seeds (tests/fuzz/README.md says which).
fuzz-seeds: $(BUILD)/cbimg $(BUILD)/fuzz/gen_seeds
	$(BUILD)/fuzz/gen_seeds tests/fuzz/corpus format/vectors

fuzz-bins: $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)

fuzz-build:
	@if ! command -v $(FUZZ_CC) >/dev/null 2>&1; then \
	  echo "SKIP: make fuzz needs clang with libFuzzer (make deps: clang libclang-rt-14-dev)"; exit 0; fi; \
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) OPT="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all" \
	  EXTRA_LDFLAGS="-fsanitize=fuzzer,address,undefined" fuzz-bins

fuzz: fuzz-build
	@if command -v $(FUZZ_CC) >/dev/null 2>&1; then \
	  FUZZ_TIME=$(FUZZ_TIME) FUZZ_JOBS=$(FUZZ_JOBS) bash tests/fuzz/run.sh build-fuzz $(FUZZ_TARGETS); fi

valgrind: $(BUILD)/cbimg $(UNIT_BIN)
	bash tests/valgrind.sh $(BUILD)

deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	 if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	 else echo "all build dependencies present"; fi
	@[ -n "$(CBIMG_NO_S3)" ] && exit 0; missing=""; for p in $(DEB_PKGS_S3); do \
	   dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	 if [ -n "$$missing" ]; then echo "installing (S3 tests):$$missing"; \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

demo: $(BUILD)/cbimg
	CBIMG=$(CURDIR)/$(BUILD)/cbimg bash examples/demo.sh

bench: $(BUILD)/cbimg
	CBIMG=$(CURDIR)/$(BUILD)/cbimg bash bench/bench.sh

vectors: $(BUILD)/cbimg
	CBIMG=$(CURDIR)/$(BUILD)/cbimg bash format/vectors/make-vectors.sh

# What `make install` puts under $(DESTDIR)$(PREFIX), and `make uninstall` removes:
# the files below, then the directories they were in when these are left empty
# (never $(PREFIX) itself).
MAN_PAGES := $(sort $(wildcard man/*.[1-8]))
INST = $(DESTDIR)$(PREFIX)
INST_FILES = bin/cbimg lib/libcbimg.a include/cbimg.h \
	$(foreach m,$(MAN_PAGES),share/man/man$(subst .,,$(suffix $(m)))/$(notdir $(m))) \
	share/doc/cbimg/SPEC.md share/doc/cbimg/README.md \
	share/bash-completion/completions/cbimg share/zsh/site-functions/_cbimg
# deepest first, so that a parent is tried after its children
INST_DIRS = share/doc/cbimg share/doc share/man/man1 share/man/man5 share/man/man7 share/man \
	share/bash-completion/completions share/bash-completion share/zsh/site-functions share/zsh \
	share bin lib include

install: $(BUILD)/cbimg
	install -d $(INST)/bin $(INST)/share/man/man1 $(INST)/share/man/man5 $(INST)/share/man/man7 \
	  $(INST)/lib $(INST)/include $(INST)/share/doc/cbimg \
	  $(INST)/share/bash-completion/completions $(INST)/share/zsh/site-functions
	install -m 0755 $(BUILD)/cbimg $(INST)/bin/cbimg
	install -m 0644 $(BUILD)/libcbimg.a $(INST)/lib/libcbimg.a
	install -m 0644 include/cbimg.h $(INST)/include/cbimg.h
	install -m 0644 man/*.1 $(INST)/share/man/man1/
	install -m 0644 man/*.5 $(INST)/share/man/man5/
	install -m 0644 man/*.7 $(INST)/share/man/man7/
	install -m 0644 format/SPEC.md README.md $(INST)/share/doc/cbimg/
	install -m 0644 completion/cbimg.bash $(INST)/share/bash-completion/completions/cbimg
	install -m 0644 completion/_cbimg $(INST)/share/zsh/site-functions/_cbimg
	if [ -n "$(NBDKIT_PLUGIN)" ] && [ -n "$(NBDKIT_PLUGINDIR)" ] && [ -f "$(NBDKIT_PLUGIN)" ]; then \
	  install -d $(DESTDIR)$(NBDKIT_PLUGINDIR) && \
	  install -m 0755 $(NBDKIT_PLUGIN) $(DESTDIR)$(NBDKIT_PLUGINDIR)/nbdkit-cbimg-plugin.so; fi

uninstall:
	rm -f $(addprefix $(INST)/,$(INST_FILES))
	# the plugin, and below DESTDIR the directories made for it (up to the prefix)
	if [ -n "$(NBDKIT_PLUGINDIR)" ]; then \
	  rm -f $(DESTDIR)$(NBDKIT_PLUGINDIR)/nbdkit-cbimg-plugin.so; \
	  if [ -n "$(DESTDIR)" ]; then d=$(DESTDIR)$(NBDKIT_PLUGINDIR); \
	    while [ "$$d" != "$(INST)" ] && [ "$$d" != "$(DESTDIR)" ] && [ "$$d" != / ] && [ -d "$$d" ]; do \
	      rmdir --ignore-fail-on-non-empty "$$d"; d=$$(dirname "$$d"); done; fi; fi
	for d in $(INST_DIRS); do \
	  if [ -d "$(INST)/$$d" ]; then rmdir --ignore-fail-on-non-empty "$(INST)/$$d"; fi; \
	done

clean:
	rm -rf build build-asan build-fuzz
