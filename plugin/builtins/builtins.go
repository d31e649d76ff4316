// Package builtins links every plugin shipped with mtwatch into a binary:
// each plugin registers itself in init, so importing this package for its
// side effects is all mtwatchd does to have them.
package builtins

import (
	_ "github.com/mtwatch/mtwatch/plugin/exec"
	_ "github.com/mtwatch/mtwatch/plugin/hotplug"
	_ "github.com/mtwatch/mtwatch/plugin/log"
)
