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

// gccFlags build xenemuSource into a preload library.
var gccFlags = []string{"-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"}

var (
	buildOnce sync.Once
	buildLib  string
	buildErr  error
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
	buildOnce.Do(func() { buildLib, buildErr = buildXenemu() })
	return buildLib, buildErr
}

func buildXenemu() (string, error) {
	h := sha256.New()
	h.Write(xenemuSource)
	h.Write([]byte(strings.Join(gccFlags, " ")))
	out := filepath.Join(os.TempDir(), "mtwatch-xenemu-"+hex.EncodeToString(h.Sum(nil)[:8])+".so")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "", fmt.Errorf("%w: gcc is needed to build the xenemu library: install Debian package gcc", ErrNotInstalled)
	}
	dir, err := os.MkdirTemp("", "mtwatch-xenemu-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	src, lib := filepath.Join(dir, "xenemu.c"), filepath.Join(dir, "xenemu.so")
	if err := os.WriteFile(src, xenemuSource, 0o644); err != nil {
		return "", err
	}
	args := append(append([]string{}, gccFlags...), "-o", lib, src, "-ldl")
	if msg, err := exec.Command(gcc, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("build xenemu: %v\n%s", err, msg)
	}
	// Rename is atomic, so parallel test binaries never load a partial file.
	if err := os.Rename(lib, out); err != nil {
		return "", err
	}
	return out, nil
}
