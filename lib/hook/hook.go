// Package hook turns what a toolstack tells its hooks (libvirt's libxl hook
// argv and domain XML, XAPI's hook arguments) into mtwatch node actions. It
// holds all the logic of mtwatch-hook, so that the scripts installed into
// the toolstacks' hook directories stay one line long.
package hook

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Exit codes of mtwatch-hook; ExitCode decides which one a failure gets.
// libvirt aborts the operation on any non-zero exit, so under libvirt a
// failure or bad input exits 0 unless strict, and only a wrong argument
// shape (which libvirt itself never produces) exits 2. XAPI reads 1 as "log
// and continue" and anything else as "abort".
const (
	ExitOK      = 0 // done, nothing to do, or a failure tolerated by policy
	ExitFailure = 1 // XenStore unreachable, timed out or refused the change
	ExitUsage   = 2 // bad arguments or input: nothing was written
)

// Errors classify failures for exit codes.
var (
	// ErrUsage is returned when the hook was invoked with the wrong
	// argument shape.
	ErrUsage = errors.New("usage")
	// ErrInput is returned when the arguments or XML are well-formed but
	// unusable (no domid where one is needed, a reserved domid, garbage
	// XML).
	ErrInput = errors.New("bad input")
)

// Kind is what an Action does.
type Kind int

const (
	KindNone        Kind = iota // leave XenStore alone
	KindCreate                  // create (or ensure) the node of Domid
	KindDestroy                 // remove the node of Domid (only if it is UUID's, when given)
	KindDestroyUUID             // remove the nodes whose value is UUID
)

func (k Kind) String() string {
	return [...]string{"none", "create", "destroy", "destroy-by-uuid"}[k]
}

// Action is one node operation decided from a toolstack invocation.
type Action struct {
	Kind  Kind
	Domid domid.ID
	UUID  string
	// Why names the toolstack event, for messages.
	Why string
}

// Run carries out a.
func Run(ctx context.Context, c *xenstore.Client, a Action) error {
	switch a.Kind {
	case KindCreate:
		return node.Create(ctx, c, a.Domid, a.UUID)
	case KindDestroy:
		if a.UUID != "" {
			_, err := node.DestroyIf(ctx, c, a.Domid, a.UUID)
			return err
		}
		return node.Destroy(ctx, c, a.Domid)
	case KindDestroyUUID:
		_, err := node.DestroyByUUID(ctx, c, a.UUID)
		return err
	}
	return nil
}

// maxXML bounds what is read from libvirt: a domain XML is a few KiB; a
// hook must not be made to allocate without limit.
const maxXML = 1 << 20

// libvirtDomain is the part of libvirt's domain XML that matters here.
type libvirtDomain struct {
	XMLName xml.Name `xml:"domain"`
	ID      *string  `xml:"id,attr"`
	Name    string   `xml:"name"`
	UUID    string   `xml:"uuid"`
}

// ParseLibvirt decides the action for libvirt's libxl hook, invoked as
// "<domain-name> <op> <subop> <extra>" with the domain XML on stdin. Only
// the operations below touch XenStore; every other one returns KindNone without
// reading stdin, so unknown or future operations cost nothing.
//
//	started begin   create: the domain exists and has its domid (XML id)
//	reconnect begin create: libvirtd restarted; make sure the node is there
//	stopped end     destroy: the domain is gone (XML still has its id)
//	release end     destroy if still there, by id or else by uuid
func ParseLibvirt(args []string, stdin io.Reader) (Action, error) {
	if len(args) != 4 {
		return Action{}, fmt.Errorf("%w: libvirt hook takes <domain-name> <op> <subop> <extra>, got %d argument(s)", ErrUsage, len(args))
	}
	op, subop := args[1], args[2]
	why := "libvirt " + quote(op) + " " + quote(subop)
	var kind Kind
	switch op + " " + subop {
	case "started begin", "reconnect begin":
		kind = KindCreate
	case "stopped end", "release end":
		kind = KindDestroy
	default:
		return Action{Kind: KindNone, Why: why}, nil
	}
	data, err := io.ReadAll(io.LimitReader(stdin, maxXML+1))
	if err != nil {
		// Not bad input: stdin failed or timed out.
		return Action{}, fmt.Errorf("%s of domain %q: read domain xml: %w", why, args[0], err)
	}
	dom, err := parseDomainXML(data)
	if err != nil {
		return Action{}, fmt.Errorf("%w: %s of domain %q: %v", ErrInput, why, args[0], err)
	}
	a := Action{Kind: kind, Why: why}
	if dom.UUID != "" {
		if a.UUID, err = node.CanonicalUUID(dom.UUID); err != nil {
			return Action{}, fmt.Errorf("%w: %s of domain %q: %w", ErrInput, why, args[0], err)
		}
	}
	// libvirt writes id='-1' (or nothing) for a domain that is not running.
	if dom.ID == nil || *dom.ID == "-1" {
		if kind == KindDestroy && a.UUID != "" {
			a.Kind = KindDestroyUUID
			return a, nil
		}
		return Action{}, fmt.Errorf("%w: %s of domain %q: domain XML has no id", ErrInput, why, args[0])
	}
	id, err := domid.ParseGuest(*dom.ID)
	if err != nil {
		return Action{}, fmt.Errorf("%w: %s of domain %q: %w", ErrInput, why, args[0], err)
	}
	a.Domid = id
	return a, nil
}

func parseDomainXML(data []byte) (*libvirtDomain, error) {
	if len(data) > maxXML {
		return nil, fmt.Errorf("domain xml larger than %d bytes", maxXML)
	}
	if err := checkWellFormed(data); err != nil {
		return nil, fmt.Errorf("parse domain xml: %w", err)
	}
	var dom libvirtDomain
	if err := xml.Unmarshal(data, &dom); err != nil {
		return nil, fmt.Errorf("parse domain xml: %w", err)
	}
	return &dom, nil
}

// checkWellFormed refuses what encoding/xml would let through but a domain
// XML never holds and a reader could take two ways: a repeated attribute
// (<domain id='7' id='8'>, whose last value xml.Unmarshal keeps), a repeated
// <name> or <uuid>, and anything but white space, comments and processing
// instructions after the root element.
func checkWellFormed(data []byte) error {
	d := xml.NewDecoder(bytes.NewReader(data))
	var (
		depth, roots int
		seen         = map[string]bool{}
	)
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				if roots++; roots > 1 {
					return fmt.Errorf("second root element <%s>", t.Name.Local)
				}
			}
			if depth == 1 && (t.Name.Local == "name" || t.Name.Local == "uuid") {
				if seen[t.Name.Local] {
					return fmt.Errorf("repeated element <%s>", t.Name.Local)
				}
				seen[t.Name.Local] = true
			}
			attrs := make(map[xml.Name]bool, len(t.Attr))
			for _, a := range t.Attr {
				if attrs[a.Name] {
					return fmt.Errorf("element <%s> repeats attribute %s", t.Name.Local, a.Name.Local)
				}
				attrs[a.Name] = true
			}
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			if depth == 0 && len(bytes.TrimSpace(t)) > 0 {
				return fmt.Errorf("text outside the root element")
			}
		}
	}
	if roots == 0 {
		return fmt.Errorf("no root element")
	}
	return nil
}

// xapiCreate lists the XAPI hooks that run while the domain exists and name
// its domid: the node is created, or ensured, there. xenopsd passes
// -vmdomid only while a domain of the VM exists (get_hook_args,
// ocaml/xenopsd/xc/xenops_server_xen.ml), so vm-pre-start (before
// VM_create), vm-pre-reboot (after the old domain's VM_shutdown and
// vm-post-destroy, before the new one's VM_start) and vm-post-destroy never
// get one (the atomics of VM_start, VM_reboot and VM_poweroff in
// ocaml/xenopsd/lib/xenops_server.ml). XAPI has no hook with a domid right
// after a normal start, so the "pre" hooks of the operations that end a
// domain matter most: they put its teardown, the part that can block on a
// dying guest, on its own worker. vm-post-destroy removes it.
var xapiCreate = map[string]bool{
	"vm-pre-resume":   true,
	"vm-post-resume":  true,
	"vm-post-migrate": true, // on the destination host
	"vm-pre-migrate":  true, // on the source host
	"vm-pre-shutdown": true,
	"vm-pre-suspend":  true,
}

// ParseXAPI decides the action for a script in /etc/xapi.d/<hook>/, invoked with
// "-vmuuid <uuid> -reason <reason> [-vmdomid <domid>]". vm-post-destroy
// carries no domid: the node is found by the VM uuid it holds. Hooks without
// a domid (vm-pre-start) and unknown hooks do nothing.
func ParseXAPI(hook string, args []string) (Action, error) {
	values := map[string]string{}
	for i := 0; i < len(args); i += 2 {
		name := args[i]
		if i+1 >= len(args) {
			return Action{}, fmt.Errorf("%w: xapi hook %s: %s without a value", ErrUsage, quote(hook), quote(name))
		}
		switch name {
		case "-vmuuid", "-reason", "-vmdomid":
		default:
			return Action{}, fmt.Errorf("%w: xapi hook %s: unknown argument %q", ErrUsage, quote(hook), name)
		}
		// XAPI passes each once; a second value would silently win.
		if _, dup := values[name]; dup {
			return Action{}, fmt.Errorf("%w: xapi hook %s: %s given twice", ErrUsage, quote(hook), name)
		}
		values[name] = args[i+1]
	}
	uuid, reason := values["-vmuuid"], values["-reason"]
	dom, haveDom := values["-vmdomid"]
	if uuid == "" {
		return Action{}, fmt.Errorf("%w: xapi hook %s: -vmuuid is missing", ErrUsage, quote(hook))
	}
	why := "xapi " + quote(hook)
	if reason != "" {
		why += " (" + quote(reason) + ")"
	}
	uuid, err := node.CanonicalUUID(uuid)
	if err != nil {
		return Action{}, fmt.Errorf("%w: %s: %w", ErrInput, why, err)
	}
	switch {
	case hook == "vm-post-destroy":
		return Action{Kind: KindDestroyUUID, UUID: uuid, Why: why}, nil
	case xapiCreate[hook] && haveDom:
		id, err := domid.ParseGuest(dom)
		if err != nil {
			return Action{}, fmt.Errorf("%w: %s of vm %s: %w", ErrInput, why, uuid, err)
		}
		return Action{Kind: KindCreate, Domid: id, UUID: uuid, Why: why}, nil
	}
	return Action{Kind: KindNone, Why: why}, nil
}

// ParseDirect decides the action of "create [--uuid <uuid>] <domid>" or
// "destroy [--uuid <uuid>] [<domid>]", run by hand or by a script wrapping
// xl; args are what follows the command name. kind is KindCreate or
// KindDestroy.
func ParseDirect(kind Kind, args []string) (Action, error) {
	name := kind.String()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	uuid := fs.String("uuid", "", "")
	if err := fs.Parse(args); err != nil {
		return Action{}, fmt.Errorf("%w: %s: %v", ErrUsage, name, err)
	}
	return Direct(kind, *uuid, fs.Args())
}

// Direct is ParseDirect for a caller whose own flag parser took --uuid out
// (uuid, "" when not given) and left the operands: mtwatch create and
// destroy. A destroy with a uuid and no domid removes the nodes of that VM.
func Direct(kind Kind, uuid string, operands []string) (Action, error) {
	name := kind.String()
	a := Action{Kind: kind, Why: name}
	if uuid != "" {
		var err error
		if a.UUID, err = node.CanonicalUUID(uuid); err != nil {
			return Action{}, fmt.Errorf("%w: %w", ErrInput, err)
		}
	}
	want := "<domid>"
	if kind == KindDestroy {
		if len(operands) == 0 && a.UUID != "" {
			a.Kind = KindDestroyUUID
			return a, nil
		}
		want = "<domid> or --uuid"
	}
	if len(operands) != 1 {
		return Action{}, fmt.Errorf("%w: %s takes exactly one %s, got %d argument(s)", ErrUsage, name, want, len(operands))
	}
	id, err := domid.ParseGuest(operands[0])
	if err != nil {
		return Action{}, fmt.Errorf("%w: %w", ErrInput, err)
	}
	a.Domid = id
	return a, nil
}

// quote returns s as it is if it is a plain word, else Go-quoted: values
// from argv go into stderr and syslog, where a newline would forge a line.
func quote(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}

// Mode is how the hook was invoked; it decides how failures map to exit
// codes.
type Mode int

const (
	ModeDirect  Mode = iota // create/destroy from a shell or the xl workflow
	ModeLibvirt             // libvirt's libxl hook
	ModeXAPI                // a script in /etc/xapi.d/<hook>/
)

// ExitCode maps the outcome of an invocation to the process exit code. By
// default mtwatch's own failure never aborts a guest's lifecycle operation:
// libvirt sees 0 and XAPI sees 1 ("log and continue"); strict mode turns a
// failure into an abort. A wrong argument shape is a usage error (2) under
// libvirt and direct use, since libvirt itself never produces one.
func ExitCode(m Mode, strict bool, err error) int {
	if err == nil {
		return ExitOK
	}
	usage := errors.Is(err, ErrUsage) || errors.Is(err, ErrInput) || errors.Is(err, domid.ErrSyntax) ||
		errors.Is(err, domid.ErrRange) || errors.Is(err, domid.ErrReserved) || errors.Is(err, domid.ErrNotGuest) ||
		errors.Is(err, node.ErrBadUUID)
	switch m {
	case ModeLibvirt:
		switch {
		case errors.Is(err, ErrUsage):
			return ExitUsage
		case !strict:
			return ExitOK
		case usage:
			return ExitUsage
		}
		return ExitFailure
	case ModeXAPI:
		if strict {
			return ExitUsage // any code but 0 and 1 aborts the XAPI operation
		}
		return ExitFailure
	}
	if usage {
		return ExitUsage
	}
	return ExitFailure
}
