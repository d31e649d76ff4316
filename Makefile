# mtwatch — per-domain XenStore watch workers for Xen dom0.
#
#   make demo      mtwatch at work in a sandbox: agent, plugins, 20 simulated
#                  guests, one hung hotplug script; mtwatch vs single worker
#   make build     build the binaries into bin/
#   make test      install test dependencies if needed, vet, run all tests with -race
#   make bench     the agent's benchmarks beside their baselines (docs/performance.md)
#   make sandbox   a private real xenstored on a machine without Xen
#                  (XENSTORED=oxenstored for the OCaml one, as make demo)
#   make install   install binaries, hooks and systemd units (DESTDIR, PREFIX honoured)
#   make uninstall remove them again (same variables; the configuration file stays)
#   make deb       Debian packages in build/: mtwatch, mtwatch-libvirt, mtwatch-xapi
#   make deps      install the Debian packages the tests and the sandbox need
#   make man       regenerate mtwatch(1), mtwatchd(8)'s flags and mtwatchd.toml(5) in docs/man
#                  (make test fails when stale)
#   make config-example  regenerate docs/mtwatchd.toml from the defaults and the flag table
#                  in docs/mtwatchd.md and mtwatchd(8) from mtwatchd's flags (likewise)

GO        ?= go
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
SBINDIR   ?= $(PREFIX)/sbin
LIBEXECDIR ?= $(PREFIX)/lib/mtwatch
SYSCONFDIR ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR    ?= $(PREFIX)/share/man
DATADIR   ?= $(PREFIX)/share
DOCDIR    ?= $(PREFIX)/share/doc/mtwatch
DESTDIR   ?=

# Debian packages: the real xenstored and its C clients, a third client
# (pyxs) to cross-check against, gcc for the xenemu preload library, curl
# for the control API test over --unix-socket, systemd for systemd-analyze
# verify of the units, groff to check the man pages, apparmor to compile
# the AppArmor rule shipped for libvirtd (never loaded). Where
# xenstored is, and how xenemu is built and preloaded,
# lib/xenstore/xenstoredtest alone knows: the tests and the sandbox go
# through it.
DEB_PACKAGES := xen-utils-4.17 xenstore-utils python3-pyxs gcc curl systemd groff-base apparmor

# The version every binary reports (--version, mtwatch status,
# mtwatch_build_info): git describe of the tree, "-dirty" when it has
# uncommitted changes; VERSION=... overrides it (a tarball without .git).
VERSION   ?= $(shell git describe --tags --always --dirty --match 'v[0-9]*' 2>/dev/null || echo dev)
# Release binaries: the version stamped in, symbol table and DWARF stripped
# (-s -w; panics still print file:line from the runtime's own tables).
LDFLAGS   ?= -s -w
GO_LDFLAGS := $(LDFLAGS) -X github.com/mtwatch/mtwatch/internal/buildinfo.version=$(VERSION)

# Only binaries whose main package exists are built: nothing pretends to work.
# cmd/mtwatch-bench is a module of its own (its plots' gonum stays out of
# mtwatch's module graph): make bench builds it.
BINARIES := $(filter-out mtwatch-bench,$(notdir $(patsubst %/,%,$(dir $(wildcard cmd/*/main.go)))))
# The agent runs as a system daemon; the others are user commands and hooks.
SBIN_BINARIES    := $(filter mtwatchd,$(BINARIES))
BIN_BINARIES     := $(filter mtwatch,$(BINARIES))
LIBEXEC_BINARIES := $(filter mtwatch-hook,$(BINARIES))

.PHONY: all build test vet fmt-check deps demo sandbox sandbox-stop install clean fuzz bench bench-go man config-example

all: build

# Static, without cgo: a toolstack hook is a short-lived process, and
# dynamic loading plus cgo start-up would cost it a fifth of its run time.
build:
	@mkdir -p bin
	$(if $(BINARIES),CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(GO_LDFLAGS)' -o bin/ $(addprefix ./cmd/,$(BINARIES)),@true)

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
		echo "missing Debian packages:$$missing" >&2; \
		echo "run: sudo apt-get update && sudo apt-get install -y --no-install-recommends$$missing" >&2; \
		exit 1; \
	fi; \
	echo "installing:$$missing"; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	$(GO) -C packaging vet ./...
	$(GO) -C cmd/mtwatch-bench vet ./...

# The daemon of make sandbox and make demo: c (tools/xenstore's xenstored)
# or oxenstored (the OCaml one, Debian's and XCP-ng's default). The
# harness reads it from MTWATCH_TEST_XENSTORED.
XENSTORED ?= c

# The packages whose tests start xenstored through the harness
# (lib/xenstore/xenstoredtest), the harness's own included, in the modules
# that have any: make test runs them a second time against oxenstored.
HARNESS := github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest
HARNESS_MODULES := . cmd/mtwatch-bench
harness_packages = $(GO) -C $(1) list -test -f '{{if .ForTest}}{{.ForTest}}{{if eq .ForTest "$(HARNESS)"}} uses{{end}}{{range .Deps}}{{if eq . "$(HARNESS)"}} uses{{end}}{{end}}{{end}}' ./... | awk '$$2 == "uses" { print $$1 }' | sort -u

# The harness-backed integration tests start real xenstored instances, so the
# Debian packages come first (a xenstored still missing fails the tests that
# need it); -race because concurrency is the point. Every test runs against
# the C xenstored, whatever the caller's environment selects; those that use
# the harness run again against oxenstored. The programs' own variables
# point nowhere while the tests run: a test that let the caller's shell reach
# the code under test (internal/testenv) fails here, not only on the machine
# of whoever has MTWATCH_CONTROL set.
TEST_ENV := MTWATCH_CONTROL=/nonexistent/control.sock MTWATCH_XENSTORE=/nonexistent/socket \
	MTWATCH_CONFIG=/nonexistent/mtwatchd.toml MTWATCH_DOMID=7 MTWATCH_SINGLE_WORKER=true \
	MTWATCH_LOG_FORMAT=json MTWATCH_HOOK_STRICT=1 MTWATCH_XL=/nonexistent/xl \
	XENSTORED_PATH=/nonexistent/socket XENSTORED_RUNDIR=/nonexistent
test: deps fmt-check vet
	env $(TEST_ENV) MTWATCH_TEST_XENSTORED=c $(GO) test -race -count=1 ./...
	env $(TEST_ENV) MTWATCH_TEST_XENSTORED=c $(GO) -C packaging test -count=1 ./...
	env $(TEST_ENV) MTWATCH_TEST_XENSTORED=c $(GO) -C cmd/mtwatch-bench test -race -count=1 ./...
	@for m in $(HARNESS_MODULES); do \
		pkgs=$$($(call harness_packages,$$m)) && [ -n "$$pkgs" ] || { echo "no package of $$m uses $(HARNESS)" >&2; exit 1; }; \
		echo "MTWATCH_TEST_XENSTORED=oxenstored $(GO) -C $$m test -race -count=1 <the $$(echo $$pkgs | wc -w) packages of $$m that use the harness>"; \
		env $(TEST_ENV) MTWATCH_TEST_XENSTORED=oxenstored $(GO) -C $$m test -race -count=1 $$pkgs || exit 1; \
	done

# Man pages are generated from the urfave/cli definitions and committed;
# lib/admin's TestManPageCurrent fails when they are stale.
man:
	$(GO) run ./lib/admin/genman docs/man
	$(GO) test ./cmd/mtwatchd -run TestFlagDocCurrent -count=1 -update
	$(GO) run ./internal/confman/gen docs/mtwatchd.toml docs/man/mtwatchd.toml.5

# The configuration file installed (make install, make deb): the reference
# docs/mtwatchd.toml with the plugins' "enabled" and the section headers
# commented out too, so the agent runs on its defaults, those of later
# releases included, until the administrator uncomments a key.
build/mtwatchd.toml: docs/mtwatchd.toml
	@mkdir -p build
	sed -E -e "s/Every key but the plugins'$$/Every key, the plugins'/" \
		-e 's/^# "enabled" is commented out at its default/# "enabled" too, is commented out at its default/' \
		-e 's/^(\[[a-z_.]+\]|[a-z_]+ *=)/# \1/' $< > $@.$$$$ && mv $@.$$$$ $@

# docs/mtwatchd.toml is generated from the agent's and the plugins' defaults
# and committed; plugin/builtins' TestConfigExampleCurrent fails when stale.
# Likewise the flag table in docs/mtwatchd.md and the synopsis and flag
# entries of docs/man/mtwatchd.8, from cmd/mtwatchd/flags.go (cmd/mtwatchd's
# TestFlagDocCurrent).
config-example:
	$(GO) test ./plugin/builtins -run TestConfigExampleCurrent -count=1 -update
	$(GO) test ./cmd/mtwatchd -run TestFlagDocCurrent -count=1 -update
	$(GO) run ./internal/confman/gen docs/mtwatchd.toml docs/man/mtwatchd.toml.5

# Short fuzzing runs of every fuzz target (not part of make test).
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# Benchmarks are not part of make test; see docs/performance.md.
# make bench: the agent's figures (docs/performance.md), each beside its
# baseline in the same run: mtwatch-bench runs mtwatchd's core in-process
# against a private xenstored and writes docs/performance-agent.json and
# docs/isolation-cdf.svg; the Markdown tables go to stdout. Its devd
# scenario runs bin/mtwatchd's hotplug plugin beside the unmodified
# `xl devd` on the same bursts. BENCH_FLAGS shortens it (e.g. --runs 1
# --flood 3s --scale 1000 --only throughput,isolation). The storm, 1,000
# domains booting under bin/mtwatchd's hotplug plugin (over four minutes),
# runs only when named: BENCH_FLAGS='--only storm --runs 1 --json
# docs/performance-storm.json --svg ""' (not over the other scenarios' JSON).
BENCH_FLAGS ?=
bench: deps build
	$(GO) -C cmd/mtwatch-bench build -o $(CURDIR)/build/mtwatch-bench .
	build/mtwatch-bench $(BENCH_FLAGS)

# The package benchmarks (lib/xenstore, lib/dispatch, mtwatch-hook, ...).
bench-go: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

# The README's first command; see test/demo/demo.sh. Under two minutes, and
# nothing is left running when it ends or is interrupted.
demo: deps build
	@GO=$(GO) MTWATCH_TEST_XENSTORED=$(XENSTORED) test/demo/demo.sh

sandbox: deps build
	@GO=$(GO) MTWATCH_TEST_XENSTORED=$(XENSTORED) BIN=$(CURDIR)/bin test/sandbox.sh start

sandbox-stop:
	@GO=$(GO) test/sandbox.sh stop

install: build build/mtwatchd.toml
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(LIBEXECDIR)
	$(foreach b,$(BIN_BINARIES),install -m 0755 bin/$(b) $(DESTDIR)$(BINDIR)/$(b);)
	$(foreach b,$(SBIN_BINARIES),install -m 0755 bin/$(b) $(DESTDIR)$(SBINDIR)/$(b);)
	$(foreach b,$(LIBEXEC_BINARIES),install -m 0755 bin/$(b) $(DESTDIR)$(LIBEXECDIR)/$(b);)
	@for s in 1 5 8; do \
		if ls docs/man/*.$$s >/dev/null 2>&1; then \
			install -d $(DESTDIR)$(MANDIR)/man$$s && install -m 0644 docs/man/*.$$s $(DESTDIR)$(MANDIR)/man$$s/; \
		fi; \
	done
	@if [ -d systemd ] && ls systemd/*.service >/dev/null 2>&1; then \
		install -d $(DESTDIR)$(SYSTEMDUNITDIR); \
		for u in systemd/*.service systemd/*.socket systemd/*.timer; do \
			[ -f "$$u" ] || continue; \
			sed 's|@SBINDIR@|$(SBINDIR)|g; s|@BINDIR@|$(BINDIR)|g; s|@LIBEXECDIR@|$(LIBEXECDIR)|g; s|@DOCDIR@|$(DOCDIR)|g' $$u > $(DESTDIR)$(SYSTEMDUNITDIR)/$$(basename $$u); \
			chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/$$(basename $$u); \
		done; \
	fi
	@# Shell completions, written by mtwatch itself.
	install -d $(DESTDIR)$(DATADIR)/bash-completion/completions $(DESTDIR)$(DATADIR)/zsh/vendor-completions $(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	bin/mtwatch completion bash > $(DESTDIR)$(DATADIR)/bash-completion/completions/mtwatch
	bin/mtwatch completion zsh > $(DESTDIR)$(DATADIR)/zsh/vendor-completions/_mtwatch
	bin/mtwatch completion fish > $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/mtwatch.fish
	install -d $(DESTDIR)$(DOCDIR)
	install -m 0644 README.md CHANGELOG.md LICENSE docs/*.md docs/mtwatchd.toml systemd/mtwatchd.service.d/driver-domain.conf $(DESTDIR)$(DOCDIR)/
	@# The configuration file: every key commented out at its default. An
	@# existing file is the administrator's and is never replaced.
	@install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/mtwatch
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/mtwatch/mtwatchd.toml ]; then \
		echo "kept $(DESTDIR)$(SYSCONFDIR)/mtwatch/mtwatchd.toml (the shipped one is $(DOCDIR)/mtwatchd.toml)"; \
	else \
		install -m 0644 build/mtwatchd.toml $(DESTDIR)$(SYSCONFDIR)/mtwatch/mtwatchd.toml; \
		echo "installed $(DESTDIR)$(SYSCONFDIR)/mtwatch/mtwatchd.toml"; \
	fi
	@if [ -d hooks ]; then $(MAKE) --no-print-directory install-hooks; fi

# Hook scripts, installed under $(SYSCONFDIR) with the path of mtwatch-hook
# substituted: libvirt's libxl hook, and the one XAPI script, installed into
# the directory of every XAPI hook that mtwatch-hook acts on (the script
# names the hook by its directory).
XAPI_HOOKS := vm-pre-resume vm-post-resume vm-pre-migrate vm-post-migrate \
	vm-pre-shutdown vm-pre-suspend vm-post-destroy
.PHONY: install-hooks uninstall
install-hooks:
	@script() { \
		install -d "$$(dirname "$$2")"; \
		sed 's|@LIBEXECDIR@|$(LIBEXECDIR)|g; s|@DOCDIR@|$(DOCDIR)|g' "$$1" > "$$2"; \
		chmod "$$3" "$$2"; \
		echo "installed $$2"; \
	}; \
	script hooks/libvirt/hooks/libxl.d/50-mtwatch $(DESTDIR)$(SYSCONFDIR)/libvirt/hooks/libxl.d/50-mtwatch 0755; \
	script hooks/libvirt/apparmor/mtwatch-hook $(DESTDIR)$(SYSCONFDIR)/apparmor.d/local/mtwatch-hook 0644; \
	for h in $(XAPI_HOOKS); do \
		script hooks/xapi.d/50-mtwatch $(DESTDIR)$(SYSCONFDIR)/xapi.d/$$h/50-mtwatch 0755; \
	done
	@echo "libvirt: restart libvirtd (or virtxend) to load the hook; with AppArmor, add"
	@echo "  include <local/mtwatch-hook>"
	@echo "to $(SYSCONFDIR)/apparmor.d/local/usr.sbin.libvirtd and reload that profile (docs/hooks.md)"

# Removes what make install installed, with the same variables. The
# configuration file /etc/mtwatch/mtwatchd.toml is the administrator's and
# stays; so do drop-ins under /etc/systemd/system.
uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(BIN_BINARIES)) \
		$(addprefix $(DESTDIR)$(SBINDIR)/,$(SBIN_BINARIES)) \
		$(addprefix $(DESTDIR)$(LIBEXECDIR)/,$(LIBEXEC_BINARIES))
	-rmdir $(DESTDIR)$(LIBEXECDIR) 2>/dev/null
	rm -f $(addprefix $(DESTDIR)$(MANDIR)/man1/,$(notdir $(wildcard docs/man/*.1))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man5/,$(notdir $(wildcard docs/man/*.5))) \
		$(addprefix $(DESTDIR)$(MANDIR)/man8/,$(notdir $(wildcard docs/man/*.8)))
	rm -f $(addprefix $(DESTDIR)$(SYSTEMDUNITDIR)/,$(notdir $(wildcard systemd/*.service systemd/*.socket systemd/*.timer)))
	rm -rf $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(DATADIR)/bash-completion/completions/mtwatch $(DESTDIR)$(DATADIR)/zsh/vendor-completions/_mtwatch $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/mtwatch.fish
	rm -f $(DESTDIR)$(SYSCONFDIR)/libvirt/hooks/libxl.d/50-mtwatch $(DESTDIR)$(SYSCONFDIR)/apparmor.d/local/mtwatch-hook
	for h in $(XAPI_HOOKS); do \
		rm -f $(DESTDIR)$(SYSCONFDIR)/xapi.d/$$h/50-mtwatch; \
		rmdir $(DESTDIR)$(SYSCONFDIR)/xapi.d/$$h 2>/dev/null || true; \
	done
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/mtwatch/mtwatchd.toml ]; then \
		echo "kept $(DESTDIR)$(SYSCONFDIR)/mtwatch/mtwatchd.toml"; \
	fi

# Debian packages, build/mtwatch*_<version>_<arch>.deb: make install into a
# staging tree with Debian's paths, then packaging/mkdeb (nfpm as a library,
# in a module of its own so that it stays out of mtwatch's module graph)
# splits it into mtwatch, mtwatch-libvirt and mtwatch-xapi.
DEB_ARCH ?= $(shell $(GO) env GOARCH)
.PHONY: deb
deb:
	rm -rf build/debroot
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/build/debroot PREFIX=/usr \
		LIBEXECDIR=/usr/libexec/mtwatch SYSTEMDUNITDIR=/lib/systemd/system
	cd packaging && $(GO) run . --root $(CURDIR)/build/debroot --version '$(VERSION)' --arch $(DEB_ARCH) --out $(CURDIR)/build

clean:
	rm -rf bin build
