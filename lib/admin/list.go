package admin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/mtwatch/mtwatch/internal/fanout"
	"github.com/mtwatch/mtwatch/lib/control"
	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// WorkerUnknown is the worker state list reports when the agent is not
// running: the domains come from XenStore alone.
const WorkerUnknown = "unknown"

func listCommand() *cli.Command {
	return &cli.Command{
		Name:      "list",
		Aliases:   []string{"ls"},
		Usage:     "list domains and their watch workers, like xl list",
		ArgsUsage: "[domid|name ...]",
		Description: `Lists the domains mtwatchd knows with their worker and event counters:
Name ID Worker Queued Processed Dropped Stalled Current. Stalled is the age of the domain's
oldest stall: its worker's handler past the stall threshold, or a plugin's work stalled off the
workers (a hotplug script, a device stuck in set-up or teardown; mtwatch stalls says which).
--long adds the uuid, the node and introduced state, the other counters, the handler latencies
and Stalls, how many of the domain's things are stalled.

When the agent is not running, says so on stderr and lists the nodes and domain names found in
XenStore instead (worker "unknown"), exiting 0.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "long", Aliases: []string{"l"}, Usage: "more columns"},
			&cli.BoolFlag{Name: "json", Usage: "print the control API's JSON"},
		},
		OnUsageError: onUsageError,
		Action:       runList,
	}
}

// domSel is a list of domain arguments: domids and names.
type domSel struct {
	args  []string
	ids   []domid.ID // parallel to args; valid when !name[i]
	names []bool
}

// parseSel parses domain arguments; a numeric one must be a valid domid
// (dom0 allowed), anything else is a name.
func parseSel(args []string) (domSel, error) {
	s := domSel{args: args, ids: make([]domid.ID, len(args)), names: make([]bool, len(args))}
	for i, a := range args {
		if !looksNumeric(a) {
			s.names[i] = true
			continue
		}
		id, err := domid.Parse(a)
		if err != nil {
			return s, domainErr(a, err)
		}
		s.ids[i] = id
	}
	return s, nil
}

// filter keeps the domains the arguments name, in the domains' order; an
// argument matching nothing is bad input.
func (s domSel) filter(doms []control.Domain) ([]control.Domain, error) {
	if len(s.args) == 0 {
		return doms, nil
	}
	keep := make([]bool, len(doms))
	for i, a := range s.args {
		found := false
		for j, d := range doms {
			if (s.names[i] && d.Name == a) || (!s.names[i] && d.Domid == uint16(s.ids[i])) {
				keep[j], found = true, true
			}
		}
		if !found {
			if s.names[i] {
				return nil, usagef("domain %q: no such domain", a)
			}
			return nil, usagef("domain %s: no such domain", a)
		}
	}
	var out []control.Domain
	for j, d := range doms {
		if keep[j] {
			out = append(out, d)
		}
	}
	return out, nil
}

func runList(c *cli.Context) error {
	if err := rejectFlagsAfterArgs(c); err != nil {
		return err
	}
	g := globalsOf(c)
	sel, err := parseSel(c.Args().Slice())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Context, g.timeout)
	defer cancel()
	cl := g.client()
	defer cl.Close()
	doms, err := cl.Domains(ctx)
	fromXS := false
	if errors.Is(err, control.ErrAgentNotRunning) {
		fromXS = true
		fmt.Fprintf(stderrOf(c), "mtwatch: %v; listing the nodes and domains in XenStore\n", err)
		xs, derr := g.dial(c.Context)
		if derr != nil {
			return derr
		}
		defer xs.Close()
		doms, err = scanXenstore(ctx, xs)
		if err != nil {
			return failf("%v", err)
		}
	} else if err != nil {
		return agentErr(err)
	}
	doms, err = sel.filter(doms)
	if err != nil {
		return err
	}
	if g.json {
		if doms == nil {
			doms = []control.Domain{}
		}
		return writeJSON(c.App.Writer, doms)
	}
	return listTable(doms, c.Bool("long"), fromXS).write(c.App.Writer)
}

// listTable formats doms; fromXS: they come from XenStore, not the agent,
// so their counters are unknown.
func listTable(doms []control.Domain, long, fromXS bool) *table {
	cols := []string{"Name", ">ID", "Worker", ">Queued", ">Processed", ">Dropped", ">Stalled"}
	if long {
		cols = append(cols, "UUID", "Node", "Introduced", ">Dispatched", ">Coalesced", ">Filtered", ">LastLat", ">MaxLat", ">Stalls")
	}
	t := newTable(append(cols, "Current")...)
	for _, d := range doms {
		num := func(n uint64) string {
			if fromXS {
				return "-"
			}
			return strconv.FormatUint(n, 10)
		}
		stalled, current := stalledCell(d), "-"
		if d.Current != nil {
			current = d.Current.Path
		}
		row := []string{orDash(d.Name), strconv.Itoa(int(d.Domid)), d.Worker,
			num(uint64(d.Queued)), num(d.Processed), num(d.Dropped), stalled}
		if long {
			node, introduced := yesNo(d.Node), yesNo(d.Introduced)
			if d.Stale {
				node = "stale"
			}
			if d.Domid == uint16(domid.Dom0) {
				// Dom0 has no node and is not introduced: it is there.
				node, introduced = "-", "-"
			}
			row = append(row, orDash(d.UUID), node, introduced,
				num(d.Dispatched), num(d.Coalesced), num(d.Filtered), fmtUS(d.LastLatencyUS), fmtUS(d.MaxLatencyUS),
				num(uint64(d.Stalls())))
		}
		t.add(append(row, current)...)
	}
	return t
}

// stalledCell is a domain's Stalled column: the age of its oldest stall,
// a handler's or a plugin's, "-" when nothing of it is stalled.
func stalledCell(d control.Domain) string {
	if age := d.StallAgeMS(); age >= 0 {
		return fmtAge(age)
	}
	return "-"
}

// scanXenstore lists what XenStore says about domains without the agent:
// the domains under /local/domain with their names, the mtwatch nodes, and
// which guests xenstored has introduced. Dom0 comes first, then guests by
// domid, as the agent lists them.
func scanXenstore(ctx context.Context, xs *xenstore.Client) ([]control.Domain, error) {
	byID := map[domid.ID]*control.Domain{}
	get := func(id domid.ID) *control.Domain {
		d := byID[id]
		if d == nil {
			d = &control.Domain{Domid: uint16(id), Worker: WorkerUnknown}
			if id == domid.Dom0 {
				d.Worker = control.WorkerDefault
			}
			byID[id] = d
		}
		return d
	}
	names, err := domainNames(ctx, xs)
	if err != nil {
		return nil, err
	}
	for id, name := range names {
		get(id).Name = name
	}
	nodes, err := node.List(ctx, xs)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		d := get(n.Domid)
		d.Node, d.UUID = true, n.UUID
	}
	var guests []*control.Domain
	for id, d := range byID {
		if id.IsGuest() {
			guests = append(guests, d)
		}
	}
	err = fanout.Each(ctx, len(guests), inFlight, func(i int) error {
		in, err := xs.IsDomainIntroduced(ctx, domid.ID(guests[i].Domid))
		if err != nil {
			return fmt.Errorf("domain %d: %w", guests[i].Domid, err)
		}
		guests[i].Introduced = in
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Dom0 is always listed, named as the agent names it when xen-init-dom0
	// has not written its name.
	if d := get(domid.Dom0); d.Name == "" {
		d.Name = "Domain-0"
	}
	out := make([]control.Domain, 0, len(byID))
	for _, d := range byID {
		out = append(out, *d)
	}
	slices.SortFunc(out, func(a, b control.Domain) int { return cmp.Compare(a.Domid, b.Domid) })
	return out, nil
}

// domainNames maps the domains under /local/domain to their names ("" when
// a domain has no name node). Entries that are not canonical domids are
// ignored, as the agent ignores them.
func domainNames(ctx context.Context, xs *xenstore.Client) (map[domid.ID]string, error) {
	ents, err := xs.Directory(ctx, "/local/domain")
	if errors.Is(err, fs.ErrNotExist) {
		return map[domid.ID]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list /local/domain: %w", err)
	}
	var ids []domid.ID
	for _, e := range ents {
		if id, err := domid.Parse(e); err == nil {
			ids = append(ids, id)
		}
	}
	names := make([]string, len(ids))
	err = fanout.Each(ctx, len(ids), inFlight, func(i int) error {
		p := ids[i].Home() + "/name"
		v, err := xs.Read(ctx, p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("read %s: %w", p, err)
		}
		names[i] = string(v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[domid.ID]string, len(ids))
	for i, id := range ids {
		out[id] = names[i]
	}
	return out, nil
}

// inFlight bounds the XenStore requests a listing keeps in flight: the
// client pipelines them, so a host with thousands of domains is listed in a
// few round trips' time rather than thousands.
const inFlight = 64

// resolveDomain turns a domain argument (domid or name) into a guest domid,
// as xl does: a numeric argument must be a valid guest domid; a name must
// name exactly one domain under /local/domain.
func resolveDomain(ctx context.Context, xs *xenstore.Client, arg string) (domid.ID, error) {
	if looksNumeric(arg) {
		return parseGuest(arg)
	}
	names, err := domainNames(ctx, xs)
	if err != nil {
		return 0, failf("%v", err)
	}
	var found []domid.ID
	for id, n := range names {
		if n == arg {
			found = append(found, id)
		}
	}
	switch len(found) {
	case 0:
		return 0, usagef("domain %q: no such domain", arg)
	case 1:
		if !found[0].IsGuest() {
			return 0, usagef("domain %q: %v", arg, domid.ErrNotGuest)
		}
		return found[0], nil
	}
	slices.Sort(found)
	return 0, usagef("domain %q: name of several domains %v", arg, found)
}
