// Package azstore is sluice's only door to Azure Storage: connection settings
// read as the Functions host reads them, JSON documents with ETags,
// create-only blobs, leases and the write queue. It maps the differing answers
// of Azure and Azurite to one set of errors, and no SDK type leaves it.
package azstore

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// SettingName is the Functions host's storage setting; sluice reads the same
// one so that a deployed app and the CLI always talk to the same account.
const SettingName = "AzureWebJobsStorage"

// DevelopmentConnectionString is what UseDevelopmentStorage=true means:
// Azurite's well-known account on its default loopback ports. The Go SDK does
// not understand the short form, so it is expanded here.
const DevelopmentConnectionString = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;" +
	"AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;" +
	"BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;" +
	"QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;" +
	"TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"

// Settings says how to reach the storage account: either a connection string,
// or service URLs with a token credential (the identity form).
type Settings struct {
	// ConnectionString is set for the connection-string forms.
	ConnectionString string
	// BlobURL and QueueURL are set for the identity form.
	BlobURL, QueueURL string
	// ClientID selects a user-assigned managed identity in the identity form.
	ClientID string
	// Credential authenticates the identity form; nil means
	// azidentity.DefaultAzureCredential (or a managed identity when
	// ClientID or credential=managedidentity is set).
	Credential azcore.TokenCredential
	// managedIdentity is true when the settings ask for a managed identity.
	managedIdentity bool
}

// String describes the settings without any secret, for logs and errors.
func (s Settings) String() string {
	if s.ConnectionString != "" {
		blob, _, err := connStringEndpoints(s.ConnectionString)
		if err != nil {
			return "connection string (malformed)"
		}
		return "connection string for " + blob
	}
	return "identity-based storage at " + s.BlobURL
}

const expectedForms = "set AzureWebJobsStorage to a storage connection string " +
	"(DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=core.windows.net), " +
	"to UseDevelopmentStorage=true for Azurite, " +
	"or use the identity form AzureWebJobsStorage__accountName (or AzureWebJobsStorage__blobServiceUri and __queueServiceUri)"

// SettingsFromEnv reads AzureWebJobsStorage exactly as the Functions host does.
// lookup is os.LookupEnv in production; tests pass their own.
func SettingsFromEnv(lookup func(string) (string, bool)) (Settings, error) {
	get := func(suffix string) string {
		// The host accepts both "__" and ":" as the section separator.
		for _, sep := range []string{"__", ":"} {
			if v, ok := lookup(SettingName + sep + suffix); ok && strings.TrimSpace(v) != "" {
				return strings.TrimSpace(v)
			}
		}
		return ""
	}
	if cs, ok := lookup(SettingName); ok && strings.TrimSpace(cs) != "" {
		return ParseConnectionString(cs)
	}
	var s Settings
	s.ClientID = get("clientId")
	s.managedIdentity = strings.EqualFold(get("credential"), "managedidentity") || s.ClientID != ""
	account := get("accountName")
	s.BlobURL = get("blobServiceUri")
	s.QueueURL = get("queueServiceUri")
	if account != "" {
		if s.BlobURL == "" {
			s.BlobURL = "https://" + account + ".blob.core.windows.net"
		}
		if s.QueueURL == "" {
			s.QueueURL = "https://" + account + ".queue.core.windows.net"
		}
	}
	if s.BlobURL == "" && s.QueueURL == "" {
		return Settings{}, fmt.Errorf("storage settings: %s is not set: %s", SettingName, expectedForms)
	}
	if s.BlobURL == "" || s.QueueURL == "" {
		return Settings{}, fmt.Errorf("storage settings: the identity form needs both %s__blobServiceUri and %s__queueServiceUri (or %s__accountName): %s",
			SettingName, SettingName, SettingName, expectedForms)
	}
	for name, u := range map[string]string{"blobServiceUri": s.BlobURL, "queueServiceUri": s.QueueURL} {
		if err := checkServiceURL(u); err != nil {
			return Settings{}, fmt.Errorf("storage settings: %s__%s: %w", SettingName, name, err)
		}
	}
	s.BlobURL = strings.TrimRight(s.BlobURL, "/")
	s.QueueURL = strings.TrimRight(s.QueueURL, "/")
	return s, nil
}

// ParseConnectionString validates a storage connection string (or
// UseDevelopmentStorage=true) and returns settings for it. Errors never quote
// the string, which holds the account key.
func ParseConnectionString(cs string) (Settings, error) {
	cs = strings.TrimSpace(cs)
	if strings.EqualFold(strings.ReplaceAll(cs, " ", ""), "UseDevelopmentStorage=true") ||
		strings.EqualFold(strings.TrimSuffix(strings.ReplaceAll(cs, " ", ""), ";"), "UseDevelopmentStorage=true") {
		cs = DevelopmentConnectionString
	}
	if _, _, err := connStringEndpoints(cs); err != nil {
		return Settings{}, fmt.Errorf("storage settings: %s: %w; %s", SettingName, err, expectedForms)
	}
	return Settings{ConnectionString: cs}, nil
}

// connStringEndpoints returns the blob and queue endpoints a connection string
// names, and checks that it carries a credential.
func connStringEndpoints(cs string) (blob, queue string, err error) {
	kv := map[string]string{}
	for _, part := range strings.Split(cs, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return "", "", errors.New("malformed connection string: every part must be Key=Value")
		}
		kv[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	if kv["usedevelopmentstorage"] != "" {
		return "", "", errors.New("UseDevelopmentStorage must be alone in the setting")
	}
	account := kv["accountname"]
	hasKey := kv["accountkey"] != "" || kv["sharedaccesssignature"] != ""
	if !hasKey {
		return "", "", errors.New("connection string has neither AccountKey nor SharedAccessSignature")
	}
	proto := kv["defaultendpointsprotocol"]
	if proto == "" {
		proto = "https"
	}
	suffix := kv["endpointsuffix"]
	if suffix == "" {
		suffix = "core.windows.net"
	}
	blob, queue = kv["blobendpoint"], kv["queueendpoint"]
	if blob == "" || queue == "" {
		if account == "" {
			return "", "", errors.New("connection string has no AccountName and no BlobEndpoint/QueueEndpoint")
		}
		if blob == "" {
			blob = proto + "://" + account + ".blob." + suffix
		}
		if queue == "" {
			queue = proto + "://" + account + ".queue." + suffix
		}
	}
	if err := checkServiceURL(blob); err != nil {
		return "", "", fmt.Errorf("BlobEndpoint: %w", err)
	}
	if err := checkServiceURL(queue); err != nil {
		return "", "", fmt.Errorf("QueueEndpoint: %w", err)
	}
	return blob, queue, nil
}

func checkServiceURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL", raw)
	}
	return nil
}

// credential returns the token credential for the identity form.
func (s Settings) credential() (azcore.TokenCredential, error) {
	if s.Credential != nil {
		return s.Credential, nil
	}
	if s.managedIdentity {
		opts := &azidentity.ManagedIdentityCredentialOptions{}
		if s.ClientID != "" {
			opts.ID = azidentity.ClientID(s.ClientID)
		}
		cred, err := azidentity.NewManagedIdentityCredential(opts)
		if err != nil {
			return nil, fmt.Errorf("storage settings: managed identity: %w", err)
		}
		return cred, nil
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, fmt.Errorf("storage settings: DefaultAzureCredential: %w", err)
	}
	return cred, nil
}
