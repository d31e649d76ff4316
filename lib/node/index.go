package node

import (
	"strings"

	"github.com/mtwatch/mtwatch/lib/domid"
)

// indexDir holds, for every node Create wrote with a uuid, an empty entry
// <uuid>/<domid>, so that DestroyByUUID finds a VM's nodes in one listing
// instead of reading every node: with hundreds of domains stopped at once,
// reading every node per hook kept xenstored busy for seconds. The index
// only saves reads: every entry is checked against the node's value before
// anything is removed, and without a matching entry DestroyByUUID reads all
// nodes, so neither a stale entry, nor one that a guest added or removed
// while the perms were loosened, changes what is removed. Nothing but this
// package uses it, and the agent does not watch it.
const indexDir = "/local/domain/0/mtwatch-vm"

func indexPath(uuid string, id domid.ID) string {
	return indexDir + "/" + strings.ToLower(uuid) + "/" + id.String()
}
