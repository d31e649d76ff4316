package sim

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/node"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// Hook is the toolstack hook that writes the mtwatch node. Libvirt's libxl
// driver runs its hooks at "started begin" (the domain is built and
// unpaused) and "release end" (the domain is gone).
type Hook interface {
	Started(ctx context.Context, id domid.ID, uuid string) error
	Released(ctx context.Context, id domid.ID) error
}

// NodeHook writes the node in-process with lib/node, over its own
// connection, as the hook process would.
type NodeHook struct {
	Client *xenstore.Client
}

// Started creates the node of id.
func (h NodeHook) Started(ctx context.Context, id domid.ID, uuid string) error {
	return node.Create(ctx, h.Client, id, uuid)
}

// Released removes the node of id.
func (h NodeHook) Released(ctx context.Context, id domid.ID) error {
	return node.Destroy(ctx, h.Client, id)
}

// ExecHook runs the mtwatch-hook binary, as libvirt's hook script does.
type ExecHook struct {
	// Path of mtwatch-hook; Env is added to its environment (e.g. the
	// sandbox's XENSTORED_PATH).
	Path string
	Env  []string
}

// Started runs "mtwatch-hook --strict create --uuid <uuid> <id>".
func (h ExecHook) Started(ctx context.Context, id domid.ID, uuid string) error {
	return h.run(ctx, "create", "--uuid", uuid, id.String())
}

// Released runs "mtwatch-hook --strict destroy <id>".
func (h ExecHook) Released(ctx context.Context, id domid.ID) error {
	return h.run(ctx, "destroy", id.String())
}

func (h ExecHook) run(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, h.Path, append([]string{"--strict"}, args...)...)
	cmd.Env = append(cmd.Environ(), h.Env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", h.Path, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
