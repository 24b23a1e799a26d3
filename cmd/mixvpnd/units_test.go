package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// unit is a systemd unit file: section → key → values, in order.
type unit map[string]map[string][]string

// parseUnit reads the subset of systemd's syntax the units use: sections,
// key=value lines, comments and line continuations.
func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	var section, pending string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if pending != "" {
			line = pending + " " + line
			pending = ""
		}
		if strings.HasSuffix(line, "\\") {
			pending = strings.TrimSuffix(line, "\\")
			continue
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value in a section: %q", path, n, line)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u
}

// one is the single value of key, failing if there is none or several.
func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	if len(v) != 1 {
		t.Fatalf("[%s] %s has %d values %q, want one", section, key, len(v), v)
	}
	return v[0]
}

// words are all the space-separated words of key's values.
func (u unit) words(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

const unitDir = "../../assets/systemd"

// The daemon's unit is sandboxed as promised, and its command line is
// one the daemon accepts, with its files where the sandbox lets it write.
func TestDaemonUnit(t *testing.T) {
	u := parseUnit(t, filepath.Join(unitDir, "mixvpnd.service"))
	for key, want := range map[string]string{
		"CapabilityBoundingSet": "CAP_NET_ADMIN",
		"NoNewPrivileges":       "yes",
		"ProtectSystem":         "strict",
		"ProtectHome":           "yes",
		"PrivateTmp":            "yes",
		"DevicePolicy":          "closed",
		"DeviceAllow":           "/dev/net/tun rw",
		"RuntimeDirectory":      "mixvpn",
		"StateDirectory":        "mixvpn",
		"Group":                 "mixvpn",
		"Restart":               "always",
		"ProtectKernelModules":  "yes",
		"RestrictNamespaces":    "yes",
	} {
		if got := u.one(t, "Service", key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	if _, ok := u["Service"]["User"]; ok {
		t.Error("the daemon must run as root (with CAP_NET_ADMIN alone): no User=")
	}
	fams := u.words("Service", "RestrictAddressFamilies")
	slices.Sort(fams)
	if strings.Join(fams, " ") != "AF_INET AF_INET6 AF_NETLINK AF_UNIX" {
		t.Errorf("RestrictAddressFamilies %v", fams)
	}

	exec := strings.Fields(u.one(t, "Service", "ExecStart"))
	cmd := command()
	if err := cmd.ParseFlags(exec[1:]); err != nil {
		t.Fatalf("mixvpnd does not take the unit's ExecStart %q: %v", exec, err)
	}
	flag := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	state := "/var/lib/" + u.one(t, "Service", "StateDirectory")
	if filepath.Dir(flag("settings")) != state || !slices.Contains(u.words("Service", "ReadWritePaths"), state) {
		t.Errorf("settings %s are not in the writable state directory %s", flag("settings"), state)
	}
	// resolv.conf is the one file under /etc the daemon may write, and
	// only in place (see platform/dns); a machine without one must
	// still start it, hence '-'. Its backup is in the state directory.
	for _, p := range u.words("Service", "ReadWritePaths") {
		if strings.HasPrefix(strings.TrimPrefix(p, "-"), "/etc") && p != "-/etc/resolv.conf" {
			t.Errorf("ReadWritePaths %s: under /etc, only -/etc/resolv.conf", p)
		}
	}
	if !slices.Contains(u.words("Service", "ReadWritePaths"), "-/etc/resolv.conf") {
		t.Error("ReadWritePaths lacks -/etc/resolv.conf: without resolved, DNS could not be set")
	}
	backup := flag("resolv-conf-backup")
	if backup == "" {
		backup = filepath.Join(filepath.Dir(flag("settings")), resolvConfBackupName)
	}
	if filepath.Dir(backup) != state {
		t.Errorf("the resolv.conf backup %s is not in the state directory %s", backup, state)
	}
	if want := "/run/" + u.one(t, "Service", "RuntimeDirectory"); filepath.Dir(flag("socket")) != want {
		t.Errorf("socket %s is not in the runtime directory %s", flag("socket"), want)
	}
	if flag("group") != u.one(t, "Service", "Group") {
		t.Errorf("the socket's group %s is not the unit's %s", flag("group"), u.one(t, "Service", "Group"))
	}
	if !slices.Contains(u.words("Unit", "After"), "mixvpn-lockdown.service") {
		t.Error("the daemon does not start after the lockdown unit")
	}
}

// The lockdown unit loads, before the network, the file the daemon
// writes by default beside its settings, and never lifts the lockdown.
func TestLockdownUnit(t *testing.T) {
	u := parseUnit(t, filepath.Join(unitDir, "mixvpn-lockdown.service"))
	d := parseUnit(t, filepath.Join(unitDir, "mixvpnd.service"))
	cmd := command()
	if err := cmd.ParseFlags(strings.Fields(d.one(t, "Service", "ExecStart"))[1:]); err != nil {
		t.Fatal(err)
	}
	ruleset := filepath.Join(filepath.Dir(cmd.Flags().Lookup("settings").Value.String()), lockdownRulesetName)
	if got := u.one(t, "Service", "ExecStart"); got != "/usr/sbin/nft -f "+ruleset {
		t.Errorf("ExecStart=%s, want nft -f %s", got, ruleset)
	}
	if got := u.one(t, "Unit", "ConditionPathExists"); got != ruleset {
		t.Errorf("ConditionPathExists=%s, want %s", got, ruleset)
	}
	for key, want := range map[string]string{"Type": "oneshot", "RemainAfterExit": "yes"} {
		if got := u.one(t, "Service", key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	if u.one(t, "Unit", "DefaultDependencies") != "no" {
		t.Error("an early-boot unit needs DefaultDependencies=no")
	}
	for _, key := range []string{"Before", "Wants"} {
		if !slices.Contains(u.words("Unit", key), "network-pre.target") {
			t.Errorf("%s= lacks network-pre.target", key)
		}
	}
	if _, ok := u["Service"]["ExecStop"]; ok {
		t.Error("stopping the unit must not lift the lockdown")
	}
}

// systemd itself reads both units without a complaint. It insists that
// ExecStart names an executable, so the check runs on copies that start
// this test binary in place of an installed mixvpnd.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed; the other unit tests still check the files")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"mixvpnd.service", "mixvpn-lockdown.service"} {
		raw, err := os.ReadFile(filepath.Join(unitDir, name))
		if err != nil {
			t.Fatal(err)
		}
		raw = bytes.ReplaceAll(raw, []byte("/usr/bin/mixvpnd"), []byte(self))
		if _, err := exec.LookPath("nft"); err != nil {
			raw = bytes.ReplaceAll(raw, []byte("/usr/sbin/nft"), []byte(self))
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput()
	// verify warns about unknown keys and bad values but still exits 0:
	// any output is a finding.
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
