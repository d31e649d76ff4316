package config

import (
	"encoding"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// PluginDefaults is what Example needs of a plugin: the registry's
// (plugin.Registration) name, default state, description and section at its
// defaults.
type PluginDefaults struct {
	Name    string
	Enabled bool   // whether the plugin runs without enabled = ...
	Doc     string // what the plugin does, the section's comment
	// Config is the section's struct at its defaults (nil: the section has
	// no key but enabled). Its fields' toml tags name the keys and their
	// doc tags describe them; a field tagged deprecated:"<new key>" is
	// left out.
	Config any
}

// exampleHeader opens the reference file.
const exampleHeader = `mtwatchd configuration: /etc/mtwatch/mtwatchd.toml (--config).

This file is generated from the agent's and the plugins' defaults (make config-example; a test fails when it is stale). Every key but the plugins' "enabled" is commented out at its default: a missing file, an empty file and this file configure the agent identically. Flags and environment variables (mtwatchd --help) override the file. A key the agent does not know, a value of the wrong type or out of range is an error naming the file, line and key; mtwatchd then exits with status 78. SIGHUP reloads the file, all or nothing: log.level, agent.stall_threshold, agent.stale_grace, agent.reap_stale, agent.gomaxprocs and the sections of plugins that support it change live; a change to another key is logged, naming it, as needing a restart. An invalid file on reload is logged and the running configuration kept.`

// Example returns the reference configuration file: the [agent], [log]
// and [control] sections and one section per plugin, every key commented
// out at its default under its description (its doc tag), but each
// plugin's enabled, written out at its default.
func Example(plugins []PluginDefaults) (string, error) {
	var b strings.Builder
	comment(&b, exampleHeader)
	d := Default()
	for _, sec := range []struct {
		name string
		v    any
	}{{"agent", d.Agent}, {"log", d.Log}, {"control", d.Control}} {
		fmt.Fprintf(&b, "\n[%s]\n", sec.name)
		if err := keys(&b, sec.name, reflect.ValueOf(sec.v), ""); err != nil {
			return "", err
		}
	}
	b.WriteString("\n")
	comment(&b, `One section per plugin. "enabled", set to the plugin's default, turns it on or off; the other keys are the plugin's own (plugin/<name>/README.md).`)
	plugins = slices.Clone(plugins)
	slices.SortFunc(plugins, func(x, y PluginDefaults) int { return strings.Compare(x.Name, y.Name) })
	for _, p := range plugins {
		fmt.Fprintf(&b, "\n[plugins.%s]\n", p.Name)
		if p.Doc != "" {
			comment(&b, p.Doc)
		}
		// Written out, not commented: the switch an operator flips.
		fmt.Fprintf(&b, "enabled = %v\n", p.Enabled)
		if p.Config == nil {
			continue
		}
		v := reflect.ValueOf(p.Config)
		for v.Kind() == reflect.Pointer {
			v = v.Elem()
		}
		if err := keys(&b, "plugins."+p.Name, v, ""); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// keys writes the fields of struct v, each commented out at its value; an
// array of tables becomes a commented example of one element.
func keys(b *strings.Builder, table string, v reflect.Value, indent string) error {
	if v.Kind() != reflect.Struct {
		return fmt.Errorf("config: example of [%s]: %s is not a struct", table, v.Type())
	}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if !f.IsExported() || key == "" || key == "-" {
			continue
		}
		if _, old := f.Tag.Lookup("deprecated"); old {
			// Still read, no longer offered: its tag names the key
			// that replaces it.
			continue
		}
		doc := f.Tag.Get("doc")
		if doc == "" {
			return fmt.Errorf("config: example of [%s]: key %s has no doc tag", table, key)
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Struct {
			b.WriteString("\n")
			comment(b, doc)
			fmt.Fprintf(b, "# [[%s.%s]]\n", table, key)
			if err := keys(b, table+"."+key, reflect.Zero(fv.Type().Elem()), "  "); err != nil {
				return err
			}
			continue
		}
		val, err := value(fv)
		if err != nil {
			return fmt.Errorf("config: example of [%s] %s: %w", table, key, err)
		}
		if indent == "" {
			b.WriteString("\n")
			comment(b, doc)
			fmt.Fprintf(b, "# %s = %s\n", key, val)
		} else {
			fmt.Fprintf(b, "# %s%s = %s    # %s\n", indent, key, val, doc)
		}
	}
	return nil
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	textType     = reflect.TypeFor[encoding.TextMarshaler]()
)

// value renders v as a TOML value.
func value(v reflect.Value) (string, error) {
	switch {
	case v.Type() == durationType:
		return strconv.Quote(time.Duration(v.Int()).String()), nil
	case v.Type().Implements(textType):
		t, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		return strconv.Quote(string(t)), err
	}
	switch v.Kind() {
	case reflect.String:
		return strconv.Quote(v.String()), nil
	case reflect.Bool:
		return strconv.FormatBool(v.Bool()), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(v.Uint(), 10), nil
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range v.Len() {
			s, err := value(v.Index(i))
			if err != nil {
				return "", err
			}
			parts[i] = s
		}
		return "[" + strings.Join(parts, ", ") + "]", nil
	case reflect.Map:
		ks := v.MapKeys()
		slices.SortFunc(ks, func(x, y reflect.Value) int { return strings.Compare(x.String(), y.String()) })
		parts := make([]string, len(ks))
		for i, k := range ks {
			s, err := value(v.MapIndex(k))
			if err != nil {
				return "", err
			}
			parts[i] = strconv.Quote(k.String()) + " = " + s
		}
		if len(parts) == 0 {
			return "{}", nil
		}
		return "{ " + strings.Join(parts, ", ") + " }", nil
	}
	return "", fmt.Errorf("no TOML form for %s", v.Type())
}

// comment writes text as comment lines of at most 78 columns; a blank line
// in text starts a new paragraph.
func comment(b *strings.Builder, text string) {
	for i, para := range strings.Split(text, "\n\n") {
		if i > 0 {
			b.WriteString("#\n")
		}
		line := "#"
		for _, w := range strings.Fields(para) {
			if len(line)+1+len(w) > 78 && line != "#" {
				b.WriteString(line + "\n")
				line = "#"
			}
			line += " " + w
		}
		b.WriteString(line + "\n")
	}
}

// DefaultOf returns the default of the [agent], [log] or [control] key
// ("agent.gomaxprocs") as the reference file writes it: "1", "\"auto\"".
// Generated documentation of the flags takes their defaults from here, so
// it cannot disagree with the file.
func DefaultOf(key string) (string, error) {
	table, name, ok := strings.Cut(key, ".")
	d := Default()
	var sec reflect.Value
	switch table {
	case "agent":
		sec = reflect.ValueOf(d.Agent)
	case "log":
		sec = reflect.ValueOf(d.Log)
	case "control":
		sec = reflect.ValueOf(d.Control)
	}
	if ok && sec.IsValid() {
		t := sec.Type()
		for i := range t.NumField() {
			if k, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); k == name && t.Field(i).IsExported() {
				return value(sec.Field(i))
			}
		}
	}
	return "", fmt.Errorf("config: default of %q: %w: no such key of [agent], [log] or [control]", key, ErrInvalid)
}
