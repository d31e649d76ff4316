package main

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mtwatch/mtwatch/lib/xenstore"
	"github.com/mtwatch/mtwatch/lib/xenstore/xenstoredtest"
)

// peerFloor is the devd scenario's lower bound, not a runner to use: at a
// backend's InitWait it starts the device's script, at Closed with online 0
// its remove, and does nothing else (no journal, no incarnation, no cap, no
// timeout, no check of a device's directory being replaced). What a runner
// costs is its set-up latency less this one's, on the same burst: the floor
// is the watch event, one pipelined read of the nodes the decision needs,
// the fork and the script itself.
const peerFloor = "floor (start at InitWait, nothing else)"

// startFloor runs the floor runner on srv until stop.
func startFloor(ctx context.Context, srv *xenstoredtest.Server, env []string) (func() error, error) {
	c, err := dial(ctx, srv)
	if err != nil {
		return nil, err
	}
	const backend = "/local/domain/0/backend"
	w, err := c.Watch(ctx, backend, "floor")
	if err != nil {
		c.Close()
		return nil, err
	}
	life, cancel := context.WithCancel(context.Background())
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		started = map[string]string{} // device -> "added", "removed"
		pgids   = map[int]bool{}
	)
	run := func(dev, script, action string) {
		defer wg.Done()
		cmd := exec.Command(script, action)
		cmd.Env = append(append([]string{}, env...), "XENBUS_PATH="+strings.TrimPrefix(dev, "/local/domain/0/"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			logf("floor: %s: %v", dev, err)
			return
		}
		mu.Lock()
		pgids[cmd.Process.Pid] = true
		mu.Unlock()
		_ = cmd.Wait()
		mu.Lock()
		delete(pgids, cmd.Process.Pid)
		mu.Unlock()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			var ev xenstore.Event
			select {
			case <-life.Done():
				return
			case e, ok := <-w.Events():
				if !ok {
					return
				}
				ev = e
			}
			// backend/<type>/<domid>/<devid>/state
			rest, ok := strings.CutPrefix(ev.Path, backend+"/")
			parts := strings.Split(rest, "/")
			if !ok || len(parts) != 4 || parts[3] != "state" {
				continue
			}
			dev := backend + "/" + strings.Join(parts[:3], "/")
			ops := []xenstore.Op{xenstore.Read(dev + "/state"), xenstore.Read(dev + "/online"), xenstore.Read(dev + "/script")}
			_ = c.Pipeline(life, ops)
			if ops[0].Err != nil || ops[2].Err != nil {
				continue
			}
			state, online := string(ops[0].Value), string(ops[1].Value)
			mu.Lock()
			phase := started[dev]
			var action string
			switch {
			case state == "2" && phase == "":
				action, started[dev] = "add", "added"
			case state == "6" && online == "0" && phase == "added":
				action, started[dev] = "remove", "removed"
			}
			mu.Unlock()
			if action == "" {
				continue
			}
			if parts[0] == "vif" {
				action = map[string]string{"add": "online", "remove": "offline"}[action]
			}
			wg.Add(1)
			go run(dev, string(ops[2].Value), action)
		}
	}()
	return func() error {
		cancel()
		mu.Lock()
		for pgid := range pgids {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
		mu.Unlock()
		wg.Wait()
		uctx, ucancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ucancel()
		err := w.Unwatch(uctx)
		c.Close()
		if errors.Is(err, xenstore.ErrConnectionLost) {
			err = nil
		}
		return err
	}, nil
}
