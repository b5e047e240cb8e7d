package sharepoint

import (
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/config"
)

func TestNewValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		o    Options
		err  string
	}{
		{"default URL with bearer", Options{Auth: bearer()}, ""},
		{"bearer over plain http to a remote host", Options{GraphURL: "http://sim.example:8080/v1.0", Auth: bearer()}, "only sent over https"},
		{"bearer over plain http to loopback", Options{GraphURL: "http://127.0.0.1:8080/v1.0", Auth: bearer()}, ""},
		{"bearer over plain http to localhost", Options{GraphURL: "http://localhost:8080/v1.0", Auth: bearer()}, ""},
		{"bearer over plain http to [::1]", Options{GraphURL: "http://[::1]:8080/v1.0", Auth: bearer()}, ""},
		{"bearer without token", Options{GraphURL: "https://graph.microsoft.com/v1.0", Auth: config.Auth{Type: config.AuthBearer}}, "needs a token"},
		{"relative URL", Options{GraphURL: "graph.microsoft.com/v1.0", Auth: bearer()}, "want an absolute http(s) URL"},
		{"query in URL", Options{GraphURL: "https://graph.microsoft.com/v1.0?x=1", Auth: bearer()}, "must not have a query"},
		{"unknown auth", Options{Auth: config.Auth{Type: "kerberos"}}, `unknown auth type "kerberos"`},
		{"client secret over plain http to a remote host", Options{GraphURL: "http://graph.example/v1.0",
			Auth: config.Auth{Type: config.AuthClientSecret, TenantID: "00000000-0000-0000-0000-000000000001", ClientID: "00000000-0000-0000-0000-000000000002", ClientSecret: "s3cr3t"}},
			"only sent over https"},
		{"client secret over http to loopback", Options{GraphURL: "http://127.0.0.1:9/v1.0",
			Auth: config.Auth{Type: config.AuthClientSecret, TenantID: "00000000-0000-0000-0000-000000000001", ClientID: "00000000-0000-0000-0000-000000000002", ClientSecret: "s3cr3t"}},
			""},
		{"client certificate missing file", Options{Auth: config.Auth{Type: config.AuthClientCertificate, TenantID: "t", ClientID: "c", Certificate: "/nonexistent/cert.pem"}}, "read client certificate"},
		{"managed identity user-assigned", Options{Auth: config.Auth{Type: config.AuthManagedIdentity, ClientID: "00000000-0000-0000-0000-000000000002"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tt.o)
			if tt.err == "" && err != nil {
				t.Fatalf("err = %v", err)
			}
			if tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("err = %v, want %q", err, tt.err)
			}
			if err != nil && strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
}

func TestClientCertificateFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := dir + "/bad.pem"
	if err := writeFile(bad, "not a pem"); err != nil {
		t.Fatal(err)
	}
	_, err := New(Options{Auth: config.Auth{Type: config.AuthClientCertificate, TenantID: "t", ClientID: "c", Certificate: bad}})
	if err == nil || !strings.Contains(err.Error(), "client certificate "+bad) {
		t.Fatalf("err = %v", err)
	}
}
