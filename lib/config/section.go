package config

import (
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
)

// Section is one [plugins.<name>] section; it implements plugin.Section.
type Section struct {
	cfg     *Config
	name    string
	prim    toml.Primitive
	md      toml.MetaData
	present bool
}

// Name is the plugin's name.
func (s *Section) Name() string { return s.name }

// File is the configuration file, "" on defaults.
func (s *Section) File() string { return s.cfg.File }

// Present reports whether the file has the section.
func (s *Section) Present() bool { return s.present }

// Enabled returns the section's "enabled" key, or def when it has none.
func (s *Section) Enabled(def bool) (bool, error) {
	if !s.present {
		return def, nil
	}
	var v struct {
		Enabled *bool `toml:"enabled"`
	}
	if err := s.md.PrimitiveDecode(s.prim, &v); err != nil {
		return false, s.decodeErr(err)
	}
	if v.Enabled == nil {
		return def, nil
	}
	return *v.Enabled, nil
}

// Decode decodes the section into v; a key v has no field for is an error
// naming the file, line and key. Without a section in the file v keeps the
// values it had: the plugin's defaults.
func (s *Section) Decode(v any) error {
	if !s.present {
		return nil
	}
	if err := s.md.PrimitiveDecode(s.prim, v); err != nil {
		return s.decodeErr(err)
	}
	return s.Unused()
}

// Unused returns an error for the first key of the section nothing decoded
// ("enabled" aside), or nil.
func (s *Section) Unused() error {
	if !s.present {
		return nil
	}
	for _, k := range s.md.Undecoded() {
		if len(k) < 3 || k[0] != "plugins" || k[1] != s.name {
			continue
		}
		if len(k) == 3 && k[2] == "enabled" {
			continue
		}
		return s.cfg.errorAt(k.String(), "unknown key %q", strings.Join(k[2:], "."))
	}
	return nil
}

// Errorf returns an error naming the file and line of key, relative to the
// section ("rule[2].path"); a key not in the file names the section.
func (s *Section) Errorf(key, format string, args ...any) error {
	full := "plugins." + s.name
	if key != "" {
		full += "." + key
	}
	return s.cfg.errorAt(full, format, args...)
}

func (s *Section) decodeErr(err error) error {
	e := s.cfg.errorForDecode(err)
	if ce, ok := e.(*Error); ok && ce.Line == 0 {
		ce.Line = s.cfg.index.find("plugins." + s.name)
		ce.Msg = fmt.Sprintf("[plugins.%s]: %s", s.name, ce.Msg)
	}
	return e
}
