package azstore

import (
	"strings"
	"testing"
)

func TestSettingsFromEnv(t *testing.T) {
	t.Parallel()
	const key = "c2VjcmV0a2V5c2VjcmV0a2V5"
	tests := []struct {
		name      string
		env       map[string]string
		wantConn  string // substring of the connection string, or "" for identity
		wantBlob  string
		wantQueue string
		wantErr   string // substring of the error
	}{
		{name: "full connection string",
			env:      map[string]string{"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=" + key + ";EndpointSuffix=core.windows.net"},
			wantConn: "AccountName=acct"},
		{name: "development storage",
			env:      map[string]string{"AzureWebJobsStorage": "UseDevelopmentStorage=true"},
			wantConn: "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1"},
		{name: "development storage with trailing semicolon",
			env:      map[string]string{"AzureWebJobsStorage": "UseDevelopmentStorage=true;"},
			wantConn: "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1"},
		{name: "explicit endpoints (Azurite)",
			env:      map[string]string{"AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + key + ";BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;QueueEndpoint=http://127.0.0.1:2/devstoreaccount1;"},
			wantConn: "127.0.0.1:1"},
		{name: "identity by account name",
			env:      map[string]string{"AzureWebJobsStorage__accountName": "acct"},
			wantBlob: "https://acct.blob.core.windows.net", wantQueue: "https://acct.queue.core.windows.net"},
		{name: "identity by service URIs",
			env: map[string]string{"AzureWebJobsStorage__blobServiceUri": "https://a.blob.core.windows.net/",
				"AzureWebJobsStorage__queueServiceUri": "https://a.queue.core.windows.net"},
			wantBlob: "https://a.blob.core.windows.net", wantQueue: "https://a.queue.core.windows.net"},
		{name: "identity with colon separator",
			env:      map[string]string{"AzureWebJobsStorage:accountName": "acct"},
			wantBlob: "https://acct.blob.core.windows.net", wantQueue: "https://acct.queue.core.windows.net"},
		{name: "missing", env: map[string]string{}, wantErr: "AzureWebJobsStorage is not set"},
		{name: "blank", env: map[string]string{"AzureWebJobsStorage": "  "}, wantErr: "AzureWebJobsStorage is not set"},
		{name: "not key=value", env: map[string]string{"AzureWebJobsStorage": "hello"}, wantErr: "Key=Value"},
		{name: "no key", env: map[string]string{"AzureWebJobsStorage": "AccountName=acct"}, wantErr: "neither AccountKey nor SharedAccessSignature"},
		{name: "no account", env: map[string]string{"AzureWebJobsStorage": "AccountKey=" + key}, wantErr: "no AccountName"},
		{name: "bad endpoint", env: map[string]string{"AzureWebJobsStorage": "AccountKey=" + key + ";BlobEndpoint=ftp://x;QueueEndpoint=http://y"}, wantErr: "BlobEndpoint"},
		{name: "identity missing queue", env: map[string]string{"AzureWebJobsStorage__blobServiceUri": "https://a.blob.core.windows.net"}, wantErr: "queueServiceUri"},
		{name: "identity bad URI", env: map[string]string{"AzureWebJobsStorage__blobServiceUri": "nope", "AzureWebJobsStorage__queueServiceUri": "https://q"}, wantErr: "blobServiceUri"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := SettingsFromEnv(func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), key) {
					t.Fatalf("error leaks the account key: %v", err)
				}
				if !strings.Contains(err.Error(), "AzureWebJobsStorage") {
					t.Fatalf("error does not name the setting: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantConn != "" && !strings.Contains(s.ConnectionString, tc.wantConn) {
				t.Fatalf("connection string %q lacks %q", s.ConnectionString, tc.wantConn)
			}
			if s.BlobURL != tc.wantBlob || s.QueueURL != tc.wantQueue {
				t.Fatalf("urls = %q, %q; want %q, %q", s.BlobURL, s.QueueURL, tc.wantBlob, tc.wantQueue)
			}
			if strings.Contains(s.String(), key) {
				t.Fatalf("String() leaks the key: %s", s)
			}
		})
	}
}
