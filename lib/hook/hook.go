// Package hook turns what a toolstack tells its hooks (libvirt's libxl hook
// argv and domain XML, XAPI's hook arguments) into mtwatch node actions. It
// holds all the logic of mtwatch-hook, so that the scripts installed into
// the toolstacks' hook directories stay one line long.
package hook

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Exit codes of mtwatch-hook. A toolstack that treats any non-zero exit as
// "abort" (libvirt) only sees them in strict mode; XAPI reads 1 as "log and
// continue" and anything else as "abort".
const (
	ExitOK      = 0 // done, nothing to do, or a failure tolerated by policy
	ExitFailure = 1 // XenStore unreachable, timed out or refused the change
	ExitUsage   = 2 // bad arguments or input: nothing was written
)

// Errors classify failures for exit codes.
var (
	// ErrUsage: the hook was invoked with the wrong argument shape.
	ErrUsage = errors.New("usage")
	// ErrInput: the arguments or XML are well-formed but unusable (no
	// domid where one is needed, a reserved domid, garbage XML).
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
	why := "libvirt " + op + " " + subop
	var kind Kind
	switch op + " " + subop {
	case "started begin", "reconnect begin":
		kind = KindCreate
	case "stopped end", "release end":
		kind = KindDestroy
	default:
		return Action{Kind: KindNone, Why: why}, nil
	}
	dom, err := parseDomainXML(stdin)
	if err != nil {
		return Action{}, fmt.Errorf("%w: %s of domain %q: %v", ErrInput, why, args[0], err)
	}
	a := Action{Kind: kind, Why: why}
	if dom.UUID != "" {
		if !node.ValidUUID(dom.UUID) {
			return Action{}, fmt.Errorf("%w: %s of domain %q: %w: %q", ErrInput, why, args[0], node.ErrBadUUID, dom.UUID)
		}
		a.UUID = strings.ToLower(dom.UUID)
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

func parseDomainXML(r io.Reader) (*libvirtDomain, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxXML+1))
	if err != nil {
		return nil, fmt.Errorf("read domain xml: %w", err)
	}
	if len(data) > maxXML {
		return nil, fmt.Errorf("domain xml larger than %d bytes", maxXML)
	}
	var dom libvirtDomain
	if err := xml.Unmarshal(data, &dom); err != nil {
		return nil, fmt.Errorf("parse domain xml: %w", err)
	}
	return &dom, nil
}

// xapiCreate lists the XAPI hooks that run while the domain exists and name
// its domid: the node is created, or ensured, there. XAPI has no hook with
// a domid right after a normal start, so the "pre" hooks of the operations
// that end a domain matter most: they put its teardown, the part that can
// block on a dying guest, on its own worker. vm-post-destroy removes it.
var xapiCreate = map[string]bool{
	"vm-pre-resume":   true,
	"vm-post-resume":  true,
	"vm-post-migrate": true, // on the destination host
	"vm-pre-migrate":  true, // on the source host
	"vm-pre-shutdown": true,
	"vm-pre-reboot":   true,
	"vm-pre-suspend":  true,
}

// ParseXAPI decides the action for a script in /etc/xapi.d/<hook>/, invoked with
// "-vmuuid <uuid> -reason <reason> [-vmdomid <domid>]". vm-post-destroy
// carries no domid: the node is found by the VM uuid it holds. Hooks without
// a domid (vm-pre-start) and unknown hooks do nothing.
func ParseXAPI(hook string, args []string) (Action, error) {
	var uuid, reason, dom string
	var haveDom bool
	for i := 0; i < len(args); i += 2 {
		if i+1 >= len(args) {
			return Action{}, fmt.Errorf("%w: xapi hook %s: %s without a value", ErrUsage, hook, args[i])
		}
		v := args[i+1]
		switch args[i] {
		case "-vmuuid":
			uuid = v
		case "-reason":
			reason = v
		case "-vmdomid":
			dom, haveDom = v, true
		default:
			return Action{}, fmt.Errorf("%w: xapi hook %s: unknown argument %q", ErrUsage, hook, args[i])
		}
	}
	if uuid == "" {
		return Action{}, fmt.Errorf("%w: xapi hook %s: -vmuuid is missing", ErrUsage, hook)
	}
	why := "xapi " + hook
	if reason != "" {
		why += " (" + reason + ")"
	}
	if !node.ValidUUID(uuid) {
		return Action{}, fmt.Errorf("%w: %s: %w: %q", ErrInput, why, node.ErrBadUUID, uuid)
	}
	uuid = strings.ToLower(uuid)
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
