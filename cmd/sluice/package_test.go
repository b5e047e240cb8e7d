package main

import (
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/functions"
)

// TestPackageMatchesTheFunctionsAppLayout builds dist/ as `make package`
// does and checks it is a Functions custom-handler app: host.json at the
// root naming the executable, one folder per function with a valid
// function.json, a static linux/amd64 executable.
func TestPackageMatchesTheFunctionsAppLayout(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Parallel()
	dist := filepath.Join(t.TempDir(), "dist")
	out, err := exec.Command("../../scripts/package", dist).CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/package: %v\n%s", err, out)
	}
	var host struct {
		Version       string
		CustomHandler struct {
			Description struct {
				DefaultExecutablePath string
				Arguments             []string
			}
			EnableForwardingHttpRequest bool
		}
		ExtensionBundle struct{ ID, Version string }
		FunctionTimeout string
	}
	data, err := os.ReadFile(filepath.Join(dist, "host.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &host); err != nil {
		t.Fatalf("host.json: %v", err)
	}
	if host.Version != "2.0" || host.CustomHandler.Description.DefaultExecutablePath != "sluice" ||
		strings.Join(host.CustomHandler.Description.Arguments, " ") != "serve" || host.CustomHandler.EnableForwardingHttpRequest ||
		host.ExtensionBundle.ID != "Microsoft.Azure.Functions.ExtensionBundle" || host.ExtensionBundle.Version != "[4.*, 5.0.0)" {
		t.Fatalf("host.json = %+v", host)
	}
	hs, err := functions.LoadHostSettings(filepath.Join(dist, "host.json"))
	if err != nil {
		t.Fatalf("host.json settings: %v", err)
	}
	if hs.Queues.MaxDequeueCount < 1 || hs.FunctionTimeout <= 0 {
		t.Fatalf("host settings = %+v", hs)
	}

	want := map[string]struct{ trigger, extra string }{
		"read":   {"timerTrigger", "%SLUICE_READ_SCHEDULE%"},
		"write":  {"queueTrigger", "sluice-write"},
		"replay": {"httpTrigger", "replay/{pipeline}/{destination}"},
		"status": {"httpTrigger", "status/{pipeline?}"},
	}
	for name, w := range want {
		data, err := os.ReadFile(filepath.Join(dist, name, "function.json"))
		if err != nil {
			t.Fatalf("function %s: %v", name, err)
		}
		var fn struct {
			Bindings []map[string]any
		}
		if err := json.Unmarshal(data, &fn); err != nil {
			t.Fatalf("%s/function.json: %v", name, err)
		}
		if len(fn.Bindings) == 0 || fn.Bindings[0]["type"] != w.trigger || fn.Bindings[0]["direction"] != "in" {
			t.Fatalf("%s/function.json trigger = %v", name, fn.Bindings)
		}
		if !strings.Contains(string(data), w.extra) {
			t.Fatalf("%s/function.json lacks %q", name, w.extra)
		}
		if w.trigger == "httpTrigger" {
			if fn.Bindings[0]["authLevel"] != "function" || len(fn.Bindings) != 2 || fn.Bindings[1]["type"] != "http" || fn.Bindings[1]["name"] != "res" {
				t.Fatalf("%s/function.json bindings = %v", name, fn.Bindings)
			}
		}
	}
	for _, f := range []string{".funcignore", "sluice.yaml", "local.settings.json"} {
		if _, err := os.Stat(filepath.Join(dist, f)); err != nil {
			t.Fatalf("dist lacks %s", f)
		}
	}
	bin := filepath.Join(dist, "sluice")
	fi, err := os.Stat(bin)
	if err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("sluice not executable: %v %v", fi, err)
	}
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("sluice is not an ELF binary: %v", err)
	}
	defer ef.Close()
	if ef.Machine != elf.EM_X86_64 {
		t.Fatalf("sluice is for %v, want x86-64", ef.Machine)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("sluice is dynamically linked; the Functions image needs a static binary (CGO_ENABLED=0)")
		}
	}
}
