package admin

import (
	"strings"
	"testing"
)

func TestScanCreateArgs(t *testing.T) {
	for _, tt := range []struct {
		args         string
		cfg, nameVar string
		paused, bad  bool
		dryRun       bool
	}{
		{args: "web.cfg", cfg: "web.cfg"},
		{args: "-p web.cfg", cfg: "web.cfg", paused: true},
		{args: "-qp web.cfg", cfg: "web.cfg", paused: true},
		{args: "-qpc web.cfg", bad: true}, // the console keeps xl running
		{args: "-F web.cfg", bad: true},   // so does the foreground monitor
		{args: "-nq web.cfg", cfg: "web.cfg", dryRun: true},
		{args: "--dryrun web.cfg", cfg: "web.cfg", dryRun: true},
		{args: "-f web.cfg name=db memory=512", cfg: "web.cfg", nameVar: "db"},
		{args: "-f=web.cfg", cfg: "web.cfg"},
		{args: "--defconfig=web.cfg -V", cfg: "web.cfg"},
		{args: "web.cfg name=\"db\"", cfg: "web.cfg", nameVar: "db"},
		{args: "-q", bad: true},
		{args: "-f", bad: true},
		{args: "", bad: true},
	} {
		a, nameVar, err := scanCreateArgs(strings.Fields(tt.args))
		if (err != nil) != tt.bad {
			t.Errorf("%q: error %v", tt.args, err)
			continue
		}
		if !tt.bad && (a.cfg != tt.cfg || nameVar != tt.nameVar || a.paused != tt.paused || a.dryRun != tt.dryRun) {
			t.Errorf("%q: cfg %q name %q paused %v", tt.args, a.cfg, nameVar, a.paused)
		}
	}
}

func TestCfgName(t *testing.T) {
	for cfg, want := range map[string]string{
		`name = "web"`:                       "web",
		"type='pvh'\nname='db' # the db\n":   "db",
		"# name = \"old\"\nname=\"new\"":     "new",
		"name = \"a\"\nname = \"b\"":         "b",
		"hostname = \"x\"\n":                 "",
		"name = web\n":                       "",
		"  name  =  \"spaced\"  ":            "spaced",
		"vif = ['bridge=xenbr0,name=\"x\"']": "",
	} {
		if got := cfgName(cfg); got != want {
			t.Errorf("cfgName(%q) = %q, want %q", cfg, got, want)
		}
	}
}

// FuzzScanCreateArgs: any argv (NUL-separated) is either refused or yields a
// config file that is one of the arguments (or the value of -f/--defconfig).
func FuzzScanCreateArgs(f *testing.F) {
	for _, s := range []string{"web.cfg", "-p\x00web.cfg", "-f\x00x.cfg\x00name=db", "-f=x", "--defconfig=y\x00-pq", "-f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := strings.Split(s, "\x00")
		a, _, err := scanCreateArgs(args)
		if err != nil {
			return
		}
		if a.cfg == "" {
			t.Fatalf("%q: no error and no config", args)
		}
		found := false
		for _, arg := range args {
			if strings.HasSuffix(arg, a.cfg) {
				found = true
			}
		}
		if !found {
			t.Fatalf("%q: config %q is none of the arguments", args, a.cfg)
		}
	})
}
