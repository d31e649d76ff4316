package hotplug

import (
	"fmt"
	"slices"
	"strings"

	"github.com/mtwatch/mtwatch/plugin/internal/proc"
)

// This file holds libxl's rules for how a device script is called: which
// executions a device gets, with which argv and environment
// (libxl__get_hotplug_script_info and its helpers in libxl_linux.c,
// device_hotplug in libxl_device.c).

// nodes are the backend nodes a script's argv and environment come from,
// read at add and kept: libxl runs remove before it removes the directory,
// but a directory removed under us leaves only these.
type nodes struct {
	Script     string `json:"script,omitempty"`
	GatewayDev string `json:"gatewaydev,omitempty"`
	NicType    string `json:"type,omitempty"`
}

// libxl's nic types (libxl_types.idl), as libxl_nic_type_from_string parses
// a vif backend's type node: case-insensitively.
const (
	nicUnknown = iota
	nicIOEmu
	nicVif
)

func parseNicType(s string) (int, bool) {
	switch {
	case strings.EqualFold(s, "unknown"):
		return nicUnknown, true
	case strings.EqualFold(s, "vif_ioemu"):
		return nicIOEmu, true
	case strings.EqualFold(s, "vif"):
		return nicVif, true
	}
	return 0, false
}

// atoi is C's: leading blanks, a sign, then digits up to the first other
// character; 0 without digits.
func atoi(s string) int {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	n := 0
	for i := 0; i < len(s) && s[i] >= '0' && s[i] <= '9' && n < 1<<31; i++ {
		n = n*10 + int(s[i]-'0')
	}
	if neg {
		return -n
	}
	return n
}

// execution is one run of a device's script.
type execution struct {
	prog string
	argv []string
	env  []string
}

// actionName is the name of execution numExec of an add or remove in logs,
// metrics and the script's argv: a vif's first execution is online or
// offline, every other one add or remove.
func actionName(typ string, add bool, numExec int) string {
	if typ == "vif" && numExec == 0 {
		if add {
			return "online"
		}
		return "offline"
	}
	if add {
		return "add"
	}
	return "remove"
}

// scriptFor returns execution numExec of the device's script, as libxl's
// libxl__get_hotplug_script_info: one execution for a block device; for a
// vif of type vif_ioemu (an HVM guest's emulated nic) a second one,
// `<script> add|remove type_if=tap`, unless the guest has a stub domain
// (stubdom: its device model owns the tap). skip means libxl runs nothing
// more. An error fails the device before anything runs, as in libxl.
func scriptFor(cfg *Config, base []string, k devKey, n nodes, add bool, numExec int, stubdom bool) (ex execution, skip bool, err error) {
	path := k.path()
	isVif := k.typ == "vif"
	if numExec > 0 && (!isVif || numExec > 1 || stubdom) {
		return ex, true, nil
	}
	if n.Script == "" {
		return ex, false, fmt.Errorf("unable to read script from %s", path)
	}
	nic := nicVif
	if isVif {
		var ok bool
		if n.NicType == "" {
			return ex, false, fmt.Errorf("unable to read nictype from %s", path)
		}
		if nic, ok = parseNicType(n.NicType); !ok {
			return ex, false, fmt.Errorf("unable to parse nictype %q from %s", n.NicType, path)
		}
		if nic == nicVif && numExec != 0 {
			return ex, true, nil
		}
		if nic == nicUnknown {
			return ex, false, fmt.Errorf("unable to get args/env to execute hotplug script for device %s: nic type unknown", path)
		}
	}
	prog, err := cfg.resolve(n.Script)
	if err != nil {
		return ex, false, err
	}
	env := slices.Clone(base)
	env = proc.SetEnv(env, "script", prog)
	env = proc.SetEnv(env, "XENBUS_TYPE", k.typ)
	env = proc.SetEnv(env, "XENBUS_PATH", path)
	env = proc.SetEnv(env, "XENBUS_BASE_PATH", Backend)
	argv := []string{prog, actionName(k.typ, add, numExec)}
	if isVif {
		env = proc.SetEnv(env, "netdev", n.GatewayDev)
		name := "vif" + k.dom.String() + "." + k.devid
		if nic == nicIOEmu {
			// Both names in both executions: the script learns which one
			// it is from type_if.
			env = proc.SetEnv(env, "INTERFACE", name+"-emu")
		}
		env = proc.SetEnv(env, "vif", name)
		if numExec > 0 {
			argv = append(argv, "type_if=tap")
		} else {
			argv = append(argv, "type_if=vif")
		}
	}
	return execution{prog: prog, argv: argv, env: env}, false, nil
}
