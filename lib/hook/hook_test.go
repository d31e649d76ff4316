package hook

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mtwatch/mtwatch/lib/domid"
)

const vmUUID = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"

func TestLibvirt(t *testing.T) {
	tests := []struct {
		op, subop, xml string
		want           Action
		wantErr        error
	}{
		{"started", "begin", "running.xml", Action{Kind: KindCreate, Domid: 7, UUID: vmUUID}, nil},
		{"started", "begin", "hvm-running.xml", Action{Kind: KindCreate, Domid: 32751, UUID: "c9a1d3f0-5e2b-4b7a-9d3c-0123456789ab"}, nil},
		{"reconnect", "begin", "running.xml", Action{Kind: KindCreate, Domid: 7, UUID: vmUUID}, nil},
		{"stopped", "end", "running.xml", Action{Kind: KindDestroy, Domid: 7, UUID: vmUUID}, nil},
		{"release", "end", "running.xml", Action{Kind: KindDestroy, Domid: 7, UUID: vmUUID}, nil},
		{"release", "end", "inactive.xml", Action{Kind: KindDestroyUUID, UUID: vmUUID}, nil},
		{"release", "end", "defined.xml", Action{Kind: KindDestroyUUID, UUID: vmUUID}, nil},
		{"stopped", "end", "defined.xml", Action{Kind: KindDestroyUUID, UUID: vmUUID}, nil},
		{"started", "begin", "prolog.xml", Action{Kind: KindCreate, Domid: 7, UUID: vmUUID}, nil},
		// Operations that never touch XenStore, whatever stdin holds.
		{"prepare", "begin", "garbage.txt", Action{Kind: KindNone}, nil},
		{"start", "begin", "defined.xml", Action{Kind: KindNone}, nil},
		{"started", "end", "garbage.txt", Action{Kind: KindNone}, nil},
		{"stopped", "begin", "garbage.txt", Action{Kind: KindNone}, nil},
		{"release", "begin", "garbage.txt", Action{Kind: KindNone}, nil},
		{"migrate", "begin", "garbage.txt", Action{Kind: KindNone}, nil},
		{"restore", "begin", "garbage.txt", Action{Kind: KindNone}, nil},
		{"attach", "begin", "garbage.txt", Action{Kind: KindNone}, nil},
		{"some-future-op", "begin", "garbage.txt", Action{Kind: KindNone}, nil},
		// Bad input where a domid is needed.
		{"started", "begin", "defined.xml", Action{}, ErrInput},
		{"started", "begin", "inactive.xml", Action{}, ErrInput},
		{"started", "begin", "dom0.xml", Action{}, domid.ErrNotGuest},
		{"started", "begin", "reserved.xml", Action{}, domid.ErrReserved},
		{"started", "begin", "leading-zero.xml", Action{}, domid.ErrSyntax},
		{"started", "begin", "garbage-id.xml", Action{}, domid.ErrSyntax},
		{"started", "begin", "bad-uuid.xml", Action{}, ErrInput},
		{"started", "begin", "truncated.xml", Action{}, ErrInput},
		{"started", "begin", "garbage.txt", Action{}, ErrInput},
		{"stopped", "end", "garbage.txt", Action{}, ErrInput},
		// Not well formed, or ambiguous: which id or uuid would count?
		{"started", "begin", "duplicate-id.xml", Action{}, ErrInput},
		{"stopped", "end", "duplicate-id.xml", Action{}, ErrInput},
		{"started", "begin", "duplicate-uuid.xml", Action{}, ErrInput},
		{"started", "begin", "second-root.xml", Action{}, ErrInput},
		{"started", "begin", "trailing-text.xml", Action{}, ErrInput},
	}
	for _, tt := range tests {
		name := tt.op + "/" + tt.subop + "/" + tt.xml
		t.Run(name, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", tt.xml))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := ParseLibvirt([]string{"web01", tt.op, tt.subop, "-"}, f)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "web01") {
					t.Errorf("error does not name the domain: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.Why = ""
			if got != tt.want {
				t.Fatalf("action = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestLibvirtArgs(t *testing.T) {
	for _, args := range [][]string{nil, {"web01"}, {"web01", "started", "begin"}, {"web01", "started", "begin", "-", "extra"}} {
		if _, err := ParseLibvirt(args, strings.NewReader("")); !errors.Is(err, ErrUsage) {
			t.Errorf("ParseLibvirt(%q) error = %v, want ErrUsage", args, err)
		}
	}
}

// TestLibvirtXMLBound checks that stdin is not read without limit.
func TestLibvirtXMLBound(t *testing.T) {
	big := "<domain type='xen' id='7'><name>" + strings.Repeat("x", maxXML) + "</name></domain>"
	_, err := ParseLibvirt([]string{"d", "started", "begin", "-"}, strings.NewReader(big))
	if !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("error = %v", err)
	}
}

func TestXAPI(t *testing.T) {
	tests := []struct {
		hook    string
		args    []string
		want    Action
		wantErr error
	}{
		{"vm-pre-resume", []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "12"}, Action{Kind: KindCreate, Domid: 12, UUID: vmUUID}, nil},
		{"vm-post-resume", []string{"-vmdomid", "12", "-vmuuid", vmUUID, "-reason", "none"}, Action{Kind: KindCreate, Domid: 12, UUID: vmUUID}, nil},
		{"vm-post-migrate", []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "3"}, Action{Kind: KindCreate, Domid: 3, UUID: vmUUID}, nil},
		{"vm-post-migrate", []string{"-vmuuid", vmUUID, "-reason", "none"}, Action{Kind: KindNone}, nil},
		{"vm-post-destroy", []string{"-vmuuid", strings.ToUpper(vmUUID), "-reason", "clean-shutdown"}, Action{Kind: KindDestroyUUID, UUID: vmUUID}, nil},
		{"vm-pre-start", []string{"-vmuuid", vmUUID, "-reason", "none"}, Action{Kind: KindNone}, nil},
		{"vm-pre-shutdown", []string{"-vmuuid", vmUUID, "-reason", "clean-shutdown", "-vmdomid", "12"}, Action{Kind: KindCreate, Domid: 12, UUID: vmUUID}, nil},
		// Runs between the old domain's destruction and the new one's
		// creation: xenopsd has no domid to give, and one given anyway
		// would name a domain that is gone.
		{"vm-pre-reboot", []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "12"}, Action{Kind: KindNone}, nil},
		{"vm-pre-suspend", []string{"-vmuuid", vmUUID, "-reason", "suspend", "-vmdomid", "12"}, Action{Kind: KindCreate, Domid: 12, UUID: vmUUID}, nil},
		{"vm-pre-migrate", []string{"-vmuuid", vmUUID, "-reason", "migrate", "-vmdomid", "12"}, Action{Kind: KindCreate, Domid: 12, UUID: vmUUID}, nil},
		{"vm-pre-shutdown", []string{"-vmuuid", vmUUID, "-reason", "clean-shutdown"}, Action{Kind: KindNone}, nil},
		{"vm-some-future-hook", []string{"-vmuuid", vmUUID, "-reason", "x", "-vmdomid", "12"}, Action{Kind: KindNone}, nil},
		{"vm-pre-resume", []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "0"}, Action{}, domid.ErrNotGuest},
		{"vm-pre-resume", []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "32767"}, Action{}, domid.ErrReserved},
		{"vm-pre-resume", []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "12abc"}, Action{}, domid.ErrSyntax},
		{"vm-pre-resume", []string{"-vmuuid", "x", "-reason", "none", "-vmdomid", "12"}, Action{}, ErrInput},
		{"vm-pre-resume", []string{"-reason", "none", "-vmdomid", "12"}, Action{}, ErrUsage},
		{"vm-pre-resume", []string{"-vmuuid", vmUUID, "-reason"}, Action{}, ErrUsage},
		{"vm-pre-resume", []string{"-vmuuid", vmUUID, "--bogus", "1"}, Action{}, ErrUsage},
		{"vm-pre-resume", nil, Action{}, ErrUsage},
		{"vm-pre-resume", []string{"-vmuuid", vmUUID, "-reason", "none", "-vmdomid", "7", "-vmdomid", "8"}, Action{}, ErrUsage},
		{"vm-pre-resume", []string{"-vmuuid", vmUUID, "-vmuuid", vmUUID, "-vmdomid", "7"}, Action{}, ErrUsage},
		{"vm-post-destroy", []string{"-vmuuid", vmUUID, "-reason", "a", "-reason", "b"}, Action{}, ErrUsage},
	}
	for _, tt := range tests {
		t.Run(tt.hook+"/"+strings.Join(tt.args, "_"), func(t *testing.T) {
			got, err := ParseXAPI(tt.hook, tt.args)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.Why = ""
			if got != tt.want {
				t.Fatalf("action = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	xsErr := errors.New("connect to xenstore: no such file")
	usage := ErrUsage
	input := ErrInput
	tests := []struct {
		mode   Mode
		strict bool
		err    error
		want   int
	}{
		{ModeDirect, false, nil, ExitOK},
		{ModeDirect, false, xsErr, ExitFailure},
		{ModeDirect, false, usage, ExitUsage},
		{ModeDirect, false, input, ExitUsage},
		{ModeDirect, false, domid.ErrReserved, ExitUsage},
		{ModeLibvirt, false, nil, ExitOK},
		{ModeLibvirt, false, xsErr, ExitOK},
		{ModeLibvirt, false, input, ExitOK},
		{ModeLibvirt, false, usage, ExitUsage},
		{ModeLibvirt, true, xsErr, ExitFailure},
		{ModeLibvirt, true, input, ExitUsage},
		{ModeXAPI, false, nil, ExitOK},
		{ModeXAPI, false, xsErr, ExitFailure},
		{ModeXAPI, false, usage, ExitFailure},
		{ModeXAPI, true, xsErr, ExitUsage},
	}
	for _, tt := range tests {
		if got := ExitCode(tt.mode, tt.strict, tt.err); got != tt.want {
			t.Errorf("ExitCode(%v, %v, %v) = %d, want %d", tt.mode, tt.strict, tt.err, got, tt.want)
		}
	}
}

// TestArgvQuoted: values from argv reach messages quoted, so that a newline
// in one cannot forge a line of stderr or syslog.
func TestArgvQuoted(t *testing.T) {
	forged := "x\nmtwatch-hook: forged line"
	a, err := ParseXAPI("vm-post-destroy", []string{"-vmuuid", vmUUID, "-reason", forged})
	if err != nil || strings.Contains(a.Why, "\n") || !strings.Contains(a.Why, `"x\nmtwatch-hook: forged line"`) {
		t.Errorf("Why = %q, %v", a.Why, err)
	}
	for _, args := range [][]string{{"-vmuuid", vmUUID, forged}, {"-vmuuid", vmUUID, "-reason", "r", forged, "1"}, {"-reason", "r"}} {
		_, err := ParseXAPI("vm-pre-resume\n"+forged, args)
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseXAPI(%q) error = %q", args, err)
		}
	}
	a, _ = ParseLibvirt([]string{"d", "op\nx", "begin", "-"}, strings.NewReader(""))
	if strings.Contains(a.Why, "\n") {
		t.Errorf("Why = %q", a.Why)
	}
}

func TestParseDirect(t *testing.T) {
	upper := strings.ToUpper(vmUUID)
	tests := []struct {
		kind    Kind
		args    []string
		want    Action
		wantErr error
	}{
		{KindCreate, []string{"7"}, Action{Kind: KindCreate, Domid: 7, Why: "create"}, nil},
		{KindCreate, []string{"--uuid", upper, "7"}, Action{Kind: KindCreate, Domid: 7, UUID: vmUUID, Why: "create"}, nil},
		{KindCreate, []string{"-uuid=" + vmUUID, "7"}, Action{Kind: KindCreate, Domid: 7, UUID: vmUUID, Why: "create"}, nil},
		{KindDestroy, []string{"7"}, Action{Kind: KindDestroy, Domid: 7, Why: "destroy"}, nil},
		{KindDestroy, []string{"--uuid", vmUUID, "7"}, Action{Kind: KindDestroy, Domid: 7, UUID: vmUUID, Why: "destroy"}, nil},
		{KindDestroy, []string{"--uuid", upper}, Action{Kind: KindDestroyUUID, UUID: vmUUID, Why: "destroy"}, nil},
		{KindCreate, nil, Action{}, ErrUsage},
		{KindCreate, []string{"--uuid", vmUUID}, Action{}, ErrUsage},
		{KindCreate, []string{"5", "6"}, Action{}, ErrUsage},
		{KindDestroy, nil, Action{}, ErrUsage},
		{KindCreate, []string{"--bogus", "5"}, Action{}, ErrUsage},
		{KindCreate, []string{"--uuid", "xyz", "5"}, Action{}, ErrInput},
		{KindDestroy, []string{"--uuid", "../x"}, Action{}, ErrInput},
		{KindCreate, []string{"0"}, Action{}, domid.ErrNotGuest},
		{KindCreate, []string{"32752"}, Action{}, domid.ErrReserved},
		{KindDestroy, []string{"007"}, Action{}, domid.ErrSyntax},
	}
	for _, tt := range tests {
		t.Run(tt.kind.String()+" "+strings.Join(tt.args, " "), func(t *testing.T) {
			got, err := ParseDirect(tt.kind, tt.args)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseDirect = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}
