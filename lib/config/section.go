package config

import (
	"errors"
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
	// alone: the section is a file of its own (ParseSection), its keys at
	// the top level.
	alone bool
}

// ParseSection reads data, from file, as plugin name's section on its own:
// the keys of [plugins.<name>] at the top level of the file. Its errors
// name the file, the line and the key relative to the section.
// plugin/plugintest reads the sections of its tests this way.
func ParseSection(file, name string, data []byte) (*Section, error) {
	c := Default()
	c.File = file
	c.index = indexLines(data)
	var prim toml.Primitive
	md, err := toml.Decode(string(data), &prim)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
		}
		return nil, c.errorForDecode(err)
	}
	s := &Section{cfg: c, name: name, prim: prim, md: md, present: true, alone: true}
	c.plugins[name] = s
	return s, nil
}

// key is the key of the configuration's index and errors of rel, a key
// relative to the section ("" for the section itself).
func (s *Section) key(rel string) string {
	if s.alone {
		return rel
	}
	if rel == "" {
		return "plugins." + s.name
	}
	return "plugins." + s.name + "." + rel
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
		rel := []string(k)
		if !s.alone {
			if len(k) < 3 || k[0] != "plugins" || k[1] != s.name {
				continue
			}
			rel = k[2:]
		}
		if len(rel) == 1 && rel[0] == "enabled" {
			continue
		}
		return s.errorAt(strings.Join(rel, "."), "unknown key %q", strings.Join(rel, "."))
	}
	return nil
}

// Errorf returns an error naming the file and line of key, relative to the
// section ("rule[2].path"); a key not in the file names the section.
func (s *Section) Errorf(key, format string, args ...any) error {
	return s.errorAt(key, format, args...)
}

// errorAt is Errorf; a key of a section on its own that is not in the file
// (a default) is named with its section, there being no line to name.
func (s *Section) errorAt(rel, format string, args ...any) error {
	if s.alone && s.cfg.index.find(rel) == 0 {
		return &Error{File: s.cfg.File, Key: fmt.Sprintf("[plugins.%s] %s", s.name, rel), Msg: fmt.Sprintf(format, args...)}
	}
	return s.cfg.errorAt(s.key(rel), format, args...)
}

func (s *Section) decodeErr(err error) error {
	e := s.cfg.errorForDecode(err)
	if ce, ok := e.(*Error); ok && ce.Line == 0 {
		ce.Line = s.cfg.index.find(s.key(""))
		ce.Msg = fmt.Sprintf("[plugins.%s]: %s", s.name, ce.Msg)
	}
	return e
}
