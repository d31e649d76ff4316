package plugintest

import (
	"context"
	"fmt"

	"github.com/mtwatch/mtwatch/lib/domid"
	"github.com/mtwatch/mtwatch/lib/xenstore"
)

// WriteBackend creates the backend directory of device devid of type typ
// for domain dom, relative to c's home, as libxl does: in one transaction,
// state Initialising (1), online, frontend-id, the hotplug script, and for a
// vif its type. extra holds node/value pairs written after those, so they
// override them. It returns the directory, e.g. "backend/vif/5/0". The
// plugins' in-process tests and the black-box tests of mtwatchd share it.
func WriteBackend(ctx context.Context, c *xenstore.Client, typ string, dom domid.ID, devid int, script string, extra ...string) (string, error) {
	base := fmt.Sprintf("backend/%s/%d/%d", typ, dom, devid)
	kv := []string{"frontend-id", dom.String(), "online", "1", "state", "1", "script", script}
	if typ == "vif" {
		kv = append(kv, "type", "vif") // libxl writes it for every nic
	}
	kv = append(kv, extra...)
	if len(kv)%2 != 0 {
		return "", fmt.Errorf("write backend %s: odd node/value list", base)
	}
	err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
		for i := 0; i < len(kv); i += 2 {
			if err := tx.Write(ctx, base+"/"+kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("write backend %s: %w", base, err)
	}
	return base, nil
}
