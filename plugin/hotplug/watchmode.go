package hotplug

import (
	"fmt"
	"time"
)

// This file is watch mode: where libxl runs the scripts (dom0), the plugin
// runs nothing and reports devices stuck in set-up or teardown, the
// devices whose backend can hang the guest's, or dom0's, xenwatch.

// watchedDev is a device seen in set-up or teardown.
type watchedDev struct {
	since    time.Time // when the plugin first saw it in that phase
	phase    string    // "set-up" or "teardown"
	backend  int       // backend state
	frontend string    // frontend state as last read, "" if none
}

func (w *watchedDev) detail() string {
	fe := w.frontend
	if fe == "" {
		fe = "none"
	}
	what := "at InitWait without hotplug-status"
	if w.phase == "teardown" {
		what = "Closing"
	}
	return fmt.Sprintf("device stuck in %s: backend state %d (%s), frontend state %s", w.phase, w.backend, what, fe)
}

// watchDevice notes whether the device is in set-up (backend at InitWait
// without hotplug-status) or in teardown (backend Closing), and since when.
func (p *Plugin) watchDevice(k devKey) error {
	base := k.path()
	st, ok, err := p.read(base + "/state")
	if err != nil {
		return err
	}
	phase := ""
	state := atoi(st)
	if ok {
		switch state {
		case stateInitWait:
			_, hs, err := p.read(base + "/hotplug-status")
			if err != nil {
				return err
			}
			if !hs {
				phase = "set-up"
			}
		case stateClosing:
			phase = "teardown"
		}
	}
	if phase == "" {
		p.mu.Lock()
		delete(p.watched, k)
		p.mu.Unlock()
		return nil
	}
	fe := ""
	if fp, ok, err := p.read(base + "/frontend"); err == nil && ok && fp != "" {
		fe, _, _ = p.read(fp + "/state")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	w := p.watched[k]
	if w == nil || w.phase != phase {
		w = &watchedDev{since: time.Now(), phase: phase}
		p.watched[k] = w
	}
	w.backend, w.frontend = state, fe
	return nil
}
