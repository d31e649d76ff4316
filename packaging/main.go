// Command mkdeb builds mtwatch's Debian packages from a tree staged by make
// install (make deb). It uses nfpm as a library; this module is separate
// from mtwatch's so that nfpm and its dependencies stay out of the
// product's module graph.
//
// The staged tree is split into three packages: mtwatch (agent, CLI, hook
// helper, units, man pages, completions, documentation, the configuration
// file), mtwatch-libvirt (libvirt's libxl hook and the AppArmor rule for
// libvirtd) and mtwatch-xapi (XAPI's hooks).
package main

import (
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

const (
	maintainer = "mtwatch developers <mtwatch@localhost>"
	homepage   = "https://github.com/mtwatch/mtwatch"
)

type pkg struct {
	name, description string
	depends           []string
	enhances          string
	scripts           nfpm.Scripts
	contents          files.Contents
}

func main() {
	root := flag.String("root", "", "the tree make install staged (DESTDIR)")
	version := flag.String("version", "", "the version, as git describe prints it")
	arch := flag.String("arch", "", "the Debian architecture (amd64, arm64, ...)")
	out := flag.String("out", "build", "directory for the .deb files")
	flag.Parse()
	if *root == "" || *version == "" || *arch == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: mkdeb --root DIR --version VERSION --arch ARCH [--out DIR]")
		os.Exit(2)
	}
	if err := run(*root, *version, *arch, *out); err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
}

func run(root, version, arch, out string) error {
	debVersion, err := DebVersion(version)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "mkdeb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	mtwatch := &pkg{
		name: "mtwatch",
		description: "per-domain XenStore watch workers for Xen dom0\n" +
			"mtwatchd gives every guest domain its own XenStore watch worker, so that one\n" +
			"guest whose handler hangs (a hotplug script that never returns) no longer\n" +
			"stalls the handling of all the others. Includes the mtwatch admin CLI and\n" +
			"the helper the toolstack hooks run; the hooks are in mtwatch-libvirt and\n" +
			"mtwatch-xapi.",
		depends: []string{"init-system-helpers (>= 1.54~)"},
		scripts: nfpm.Scripts{PostInstall: "scripts/mtwatch.postinst", PreRemove: "scripts/mtwatch.prerm", PostRemove: "scripts/mtwatch.postrm"},
	}
	libvirt := &pkg{
		name: "mtwatch-libvirt",
		description: "mtwatch hook for libvirt's libxl driver\n" +
			"Creates and removes mtwatch's node of each domain libvirt starts and stops,\n" +
			"so that its teardown runs on its own watch worker. Ships the AppArmor rule\n" +
			"libvirtd needs to run the hook's helper.",
		depends:  []string{"mtwatch (= " + debVersion + ")"},
		enhances: "libvirt-daemon-driver-xen",
		scripts:  nfpm.Scripts{PostInstall: "scripts/mtwatch-libvirt.postinst"},
	}
	xapi := &pkg{
		name: "mtwatch-xapi",
		description: "mtwatch hooks for XAPI\n" +
			"Creates and removes mtwatch's node of each domain XAPI (xenopsd) runs,\n" +
			"from the hooks in /etc/xapi.d/.",
		depends: []string{"mtwatch (= " + debVersion + ")"},
	}
	owner := func(dst string) *pkg {
		switch {
		case strings.HasPrefix(dst, "/etc/libvirt/"), strings.HasPrefix(dst, "/etc/apparmor.d/"):
			return libvirt
		case strings.HasPrefix(dst, "/etc/xapi.d/"):
			return xapi
		}
		return mtwatch
	}

	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: only regular files are packaged", path)
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		dst := "/" + filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		c := &files.Content{Source: path, Destination: dst, FileInfo: &files.ContentFileInfo{Mode: info.Mode().Perm()}}
		if strings.HasPrefix(dst, "/etc/") {
			// Debian policy: every file under /etc is a conffile.
			c.Type = files.TypeConfig
		}
		if strings.HasPrefix(dst, "/usr/share/man/") {
			// Debian policy: man pages compressed with gzip -9n.
			if c.Source, err = gzipTo(work, path); err != nil {
				return err
			}
			c.Destination += ".gz"
		}
		p := owner(dst)
		p.contents = append(p.contents, c)
		return nil
	})
	if err != nil {
		return err
	}
	if len(mtwatch.contents) == 0 || len(libvirt.contents) == 0 || len(xapi.contents) == 0 {
		return errors.New("the staged tree lacks the agent, the libvirt hook or the XAPI hooks: run make install into it first")
	}
	license, err := copyright(work)
	if err != nil {
		return err
	}
	for _, p := range []*pkg{mtwatch, libvirt, xapi} {
		p.contents = append(p.contents, &files.Content{Source: license, Destination: "/usr/share/doc/" + p.name + "/copyright", FileInfo: &files.ContentFileInfo{Mode: 0o644}})
		sort.Sort(p.contents)
		if err := build(p, debVersion, arch, out); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return nil
}

func build(p *pkg, version, arch, out string) error {
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:          p.name,
		Arch:          arch,
		Platform:      "linux",
		Version:       version,
		VersionSchema: "none",
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    maintainer,
		Description:   p.description,
		Homepage:      homepage,
		License:       "Apache-2.0",
		// Reproducible: the same tree gives the same package.
		MTime: mtime(),
		Overridables: nfpm.Overridables{
			Depends:  p.depends,
			Contents: p.contents,
			Scripts:  p.scripts,
			Deb:      nfpm.Deb{Compression: "xz"},
		},
	})
	if p.enhances != "" {
		info.Deb.Fields = map[string]string{"Enhances": p.enhances}
	}
	if err := nfpm.PrepareForPackager(info, "deb"); err != nil {
		return err
	}
	packager, err := nfpm.Get("deb")
	if err != nil {
		return err
	}
	path := filepath.Join(out, fmt.Sprintf("%s_%s_%s.deb", p.name, version, arch))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := packager.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Println("built", path)
	return nil
}

// mtime is SOURCE_DATE_EPOCH when set, else the start of 2026.
func mtime() time.Time {
	var sec int64
	if _, err := fmt.Sscan(os.Getenv("SOURCE_DATE_EPOCH"), &sec); err == nil && sec > 0 {
		return time.Unix(sec, 0).UTC()
	}
	return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
}

var (
	describe = regexp.MustCompile(`^v([0-9]+(?:\.[0-9]+)*)(?:-([0-9]+)-(g[0-9a-f]+))?(-dirty)?$`)
	bareHash = regexp.MustCompile(`^([0-9a-f]{4,40})(-dirty)?$`)
)

// DebVersion turns git describe's output into a Debian version that sorts
// as the releases do: v1.2.0 is 1.2.0, v1.2.0-3-gabc1234 (three commits
// later) 1.2.0+3.gabc1234, a tree without a release tag 0.0.0+gabc1234,
// and -dirty becomes +dirty / .dirty.
func DebVersion(v string) (string, error) {
	if m := describe.FindStringSubmatch(v); m != nil {
		out, extra := m[1], []string{}
		if m[2] != "" {
			extra = append(extra, m[2], m[3])
		}
		if m[4] != "" {
			extra = append(extra, "dirty")
		}
		if len(extra) > 0 {
			out += "+" + strings.Join(extra, ".")
		}
		return out, nil
	}
	if m := bareHash.FindStringSubmatch(v); m != nil {
		out := "0.0.0+g" + m[1]
		if m[2] != "" {
			out += ".dirty"
		}
		return out, nil
	}
	if v == "dev" {
		return "0.0.0+dev", nil
	}
	return "", fmt.Errorf("version %q: not a git describe output (v1.2.3, v1.2.3-4-gabcdef0, abcdef0, -dirty)", v)
}

func gzipTo(dir, path string) (string, error) {
	src, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer src.Close()
	dst, err := os.CreateTemp(dir, filepath.Base(path)+".*.gz")
	if err != nil {
		return "", err
	}
	zw, err := gzip.NewWriterLevel(dst, gzip.BestCompression)
	if err != nil {
		return "", err
	}
	// No name or time in the header (gzip -n): reproducible.
	if _, err := io.Copy(zw, src); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	return dst.Name(), dst.Close()
}

func copyright(dir string) (string, error) {
	path := filepath.Join(dir, "copyright")
	text := `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mtwatch
Source: ` + homepage + `

Files: *
Copyright: the mtwatch developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
`
	return path, os.WriteFile(path, []byte(text), 0o644)
}
