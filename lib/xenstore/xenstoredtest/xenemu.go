package xenstoredtest

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// xenemuSource is the preload library that stands in for the hypervisor
// (see docs/testing.md).
//
//go:embed xenemu/xenemu.c
var xenemuSource []byte

// xlctrlSource is the preload library that lets the unmodified xl devd run
// without a hypervisor: it fakes the libxenctrl calls on its path.
//
//go:embed xenemu/xlctrl.c
var xlctrlSource []byte

// domctlHeader is the Xen ABI structure both libraries write, included
// by each.
//
//go:embed xenemu/domctl.h
var domctlHeader []byte

// DefaultXl is the Debian xl binary (xen-utils-4.17); /usr/sbin/xl is a
// wrapper that looks for a running hypervisor first.
const DefaultXl = "/usr/lib/xen-4.17/bin/xl"

// gccFlags build xenemuSource into a preload library.
var gccFlags = []string{"-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"}

var (
	buildOnce sync.Once
	buildLib  string
	buildErr  error

	xlctrlOnce sync.Once
	xlctrlLib  string
	xlctrlErr  error
)

// XenemuLibrary returns the path of the xenemu preload library, building it
// with gcc (once per process, cached in the temporary directory by source
// and flags) unless $MTWATCH_XENEMU names a prebuilt one.
func XenemuLibrary() (string, error) {
	if v := os.Getenv(EnvXenemu); v != "" {
		if _, err := os.Stat(v); err != nil {
			return "", fmt.Errorf("%s: %w", EnvXenemu, err)
		}
		return v, nil
	}
	buildOnce.Do(func() { buildLib, buildErr = buildPreload("xenemu", xenemuSource) })
	return buildLib, buildErr
}

// XlctrlLibrary returns the path of the preload library under which the
// Debian xl runs `xl devd` without a hypervisor, built as XenemuLibrary
// builds xenemu.
func XlctrlLibrary() (string, error) {
	xlctrlOnce.Do(func() { xlctrlLib, xlctrlErr = buildPreload("xlctrl", xlctrlSource) })
	return xlctrlLib, xlctrlErr
}

// XlProgram returns the path of the Debian xl binary, or an error wrapping
// ErrNotInstalled.
func XlProgram() (string, error) {
	if _, err := os.Stat(DefaultXl); err != nil {
		return "", fmt.Errorf("%w: %s: install Debian package xen-utils-4.17", ErrNotInstalled, DefaultXl)
	}
	return DefaultXl, nil
}

// buildPreload builds the C source src of preload library name with gcc,
// cached in the temporary directory by source and flags.
func buildPreload(name string, src []byte) (string, error) {
	h := sha256.New()
	h.Write(src)
	h.Write(domctlHeader)
	h.Write([]byte(strings.Join(gccFlags, " ")))
	out := filepath.Join(os.TempDir(), "mtwatch-"+name+"-"+hex.EncodeToString(h.Sum(nil)[:8])+".so")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "", fmt.Errorf("%w: gcc is needed to build the %s library: install Debian package gcc", ErrNotInstalled, name)
	}
	dir, err := os.MkdirTemp("", "mtwatch-"+name+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	cfile, lib := filepath.Join(dir, name+".c"), filepath.Join(dir, name+".so")
	if err := os.WriteFile(cfile, src, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "domctl.h"), domctlHeader, 0o644); err != nil {
		return "", err
	}
	args := append(append([]string{}, gccFlags...), "-o", lib, cfile, "-ldl")
	if msg, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", name, err, msg)
	}
	// Rename is atomic, so parallel test binaries never load a partial file.
	if err := os.Rename(lib, out); err != nil {
		return "", err
	}
	return out, nil
}
