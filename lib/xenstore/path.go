package xenstore

// validChar is xenstored's node-name alphabet: ASCII alphanumerics and
// "-/_@".
var validChar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-/_@" {
		t[c] = true
	}
	return t
}()

// ValidatePath reports whether p is a path xenstored accepts for node
// operations: an absolute path ("/" or "/a/b", at most AbsPathMax bytes) or
// a relative one ("a/b", resolved against the connection's home, at most
// RelPathMax bytes), made of ASCII alphanumerics and "-/_@", without "//"
// or a trailing "/". The error wraps syscall.EINVAL.
func ValidatePath(p string) error {
	if p == "" {
		return invalidf("empty path")
	}
	max := RelPathMax
	if p[0] == '/' {
		max = AbsPathMax
		if p == "/" {
			return nil
		}
	}
	if len(p) > max {
		return invalidf("path of %d bytes over the %d-byte limit", len(p), max)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !validChar[c] {
			return invalidf("path contains byte %#02x at offset %d", c, i)
		}
		if c == '/' && i > 0 && p[i-1] == '/' {
			return invalidf("path contains \"//\"")
		}
	}
	if p[len(p)-1] == '/' {
		return invalidf("path ends with \"/\"")
	}
	return nil
}

// validateWatchPath accepts what ValidatePath accepts plus the special
// watch paths ("@introduceDomain", "@releaseDomain" and, on newer servers,
// "@releaseDomain/<domid>"-style variants); xenstored decides which exist.
func validateWatchPath(p string) error {
	if len(p) > 1 && p[0] == '@' {
		if len(p) > AbsPathMax {
			return invalidf("path of %d bytes over the %d-byte limit", len(p), AbsPathMax)
		}
		for i := 1; i < len(p); i++ {
			if !validChar[p[i]] {
				return invalidf("path contains byte %#02x at offset %d", p[i], i)
			}
		}
		return nil
	}
	return ValidatePath(p)
}

// validateToken rejects tokens that cannot travel as a NUL-terminated
// string.
func validateToken(t string) error {
	for i := 0; i < len(t); i++ {
		if t[i] == 0 {
			return invalidf("watch token contains NUL at offset %d", i)
		}
	}
	return nil
}

// validateArg rejects NUL inside a string argument.
func validateArg(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return invalidf("argument %q contains NUL", s)
		}
	}
	return nil
}
