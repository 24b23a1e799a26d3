package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/mixvpn/mixvpn/tunnel/control"
)

// target is what the user last asked for: to be connected or not, in
// which mode, through which gateways (as asked: an ID, a country or any).
// The daemon keeps it in Config.State so that after a crash, a restart
// or a reboot it comes back to it: a tunnel that was up comes up again,
// and only `mixvpn disconnect` makes the daemon start disconnected.
type target struct {
	Connected   bool
	Mode        control.Mode
	Entry, Exit string
}

// targetFile is target's form on disk.
type targetFile struct {
	Connected bool   `json:"connected"`
	Mode      string `json:"mode,omitempty"`
	Entry     string `json:"entry,omitempty"`
	Exit      string `json:"exit,omitempty"`
}

// loadTarget reads the target file; a missing file is a fresh install:
// disconnected.
func loadTarget(path string) (target, error) {
	if path == "" {
		return target{}, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return target{}, nil
	}
	if err != nil {
		return target{}, fmt.Errorf("state %s: %w", path, err)
	}
	var f targetFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return target{}, fmt.Errorf("state %s: %w", path, err)
	}
	tg := target{Connected: f.Connected, Entry: f.Entry, Exit: f.Exit}
	if f.Mode != "" {
		if tg.Mode, err = control.ParseMode(f.Mode); err != nil {
			return target{}, fmt.Errorf("state %s: %w", path, err)
		}
	}
	if err := control.ValidateLocation("entry", tg.Entry); err != nil {
		return target{}, fmt.Errorf("state %s: %w", path, err)
	}
	if err := control.ValidateLocation("exit", tg.Exit); err != nil {
		return target{}, fmt.Errorf("state %s: %w", path, err)
	}
	return tg, nil
}

// saveTarget writes tg atomically, readable by root alone: which gateways
// someone uses is nobody else's business.
func saveTarget(path string, tg target) error {
	f := targetFile{Connected: tg.Connected, Entry: tg.Entry, Exit: tg.Exit}
	if tg.Mode != control.ModeUnspecified {
		f.Mode = tg.Mode.String()
	}
	raw, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(path, append(raw, '\n'), 0o600); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// writeIfChanged writes data to path atomically unless the file already
// holds it, so the boot ruleset is not rewritten on every connect.
func writeIfChanged(path string, data []byte, perm fs.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == perm {
			return nil
		}
	}
	return writeAtomic(path, data, perm)
}

// removeFile removes path; a file that is not there is removed already.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// writeAtomic writes a temporary file in the same directory, synced, then
// renames it over path, so that a crash leaves the old contents or the
// new, never half of either.
func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), perm); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
