package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "node.json")
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	good := `{"id":"mix1a","role":"mix","layer":1,"listen":"127.0.0.1:1789","data_dir":"/tmp/x",
		"directory_url":"http://127.0.0.1:8080","directory_key":"AAAA","epoch_genesis":"2026-01-01T00:00:00Z","epoch_length":"1h"}`
	c, err := loadConfig(write(good), func(c *nodeConfig) { c.Listen = "127.0.0.9:1" })
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.9:1" || c.Layer != 1 || c.epochs().Length.Hours() != 1 {
		t.Fatalf("config %+v", c)
	}
	for name, body := range map[string]string{
		"unknown field": strings.Replace(good, `"layer":1`, `"layer":1,"colour":"red"`, 1),
		"bad role":      strings.Replace(good, `"mix"`, `"relay"`, 1),
		"bad duration":  strings.Replace(good, `"1h"`, `"soon"`, 1),
		"no directory":  strings.Replace(good, `"directory_url":"http://127.0.0.1:8080",`, ``, 1),
		"exit no pools": strings.Replace(good, `"mix"`, `"exit"`, 1),
	} {
		if _, err := loadConfig(write(body), nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
