package agent

// SetNodeFault makes the handling of node events ("node") and the retried
// rescans ("rescan") fail where f returns an error.
func SetNodeFault(a *Agent, f func(op string) error) { a.nodeFault.Store(&f) }
