package sharepoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/sluicehq/sluice/internal/config"
)

// GraphScope is the app-only scope for Microsoft Graph (reference §4.1).
const GraphScope = "https://graph.microsoft.com/.default"

// tokenRefreshMargin: a cached token is replaced this long before it expires,
// so that a page request never starts with a token about to lapse.
const tokenRefreshMargin = 5 * time.Minute

// newCredential builds the azidentity credential for a.Type (DESIGN §3.2,
// reference §4.2). bearer returns nil: the static token is used as is.
func newCredential(a config.Auth) (azcore.TokenCredential, error) {
	switch a.Type {
	case "", config.AuthDefault:
		return azidentity.NewDefaultAzureCredential(nil)
	case config.AuthClientSecret:
		return azidentity.NewClientSecretCredential(a.TenantID, a.ClientID, a.ClientSecret.Reveal(), nil)
	case config.AuthClientCertificate:
		data, err := os.ReadFile(a.Certificate)
		if err != nil {
			return nil, fmt.Errorf("read client certificate: %w", err)
		}
		certs, key, err := azidentity.ParseCertificates(data, nil)
		if err != nil {
			// The parse error never contains key material; it names the problem only.
			return nil, fmt.Errorf("client certificate %s: %w (want a PEM file with the certificate and an unencrypted private key)", a.Certificate, err)
		}
		return azidentity.NewClientCertificateCredential(a.TenantID, a.ClientID, certs, key, nil)
	case config.AuthManagedIdentity:
		var o azidentity.ManagedIdentityCredentialOptions
		if a.ClientID != "" {
			o.ID = azidentity.ClientID(a.ClientID) // user-assigned identity
		}
		return azidentity.NewManagedIdentityCredential(&o)
	case config.AuthBearer:
		if a.Token.Reveal() == "" {
			return nil, errors.New("auth type bearer needs a token")
		}
		return nil, nil
	default:
		return nil, fmt.Errorf("unknown auth type %q", a.Type)
	}
}

// tokens hands out the bearer token for each request. azidentity credentials
// cache too, but keeping the token here until ExpiresOn-5min saves a call and
// its locking per page, and lets a 401 drop exactly the token that failed.
type tokens struct {
	cred   azcore.TokenCredential // nil: static
	static string

	mu  sync.Mutex
	tok azcore.AccessToken
}

// get returns a token valid for at least tokenRefreshMargin.
func (t *tokens) get(ctx context.Context, now time.Time) (string, error) {
	if t.cred == nil {
		return t.static, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok.Token != "" && now.Add(tokenRefreshMargin).Before(t.tok.ExpiresOn) {
		return t.tok.Token, nil
	}
	tok, err := t.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{GraphScope}})
	if err != nil {
		// azidentity errors describe the credential chain, never the secret.
		return "", fmt.Errorf("get a Graph token: %w", err)
	}
	t.tok = tok
	return tok.Token, nil
}

// invalidate forgets the cached token after Graph rejected it with 401, so the
// one retry asks the credential again. It reports whether a retry can help.
func (t *tokens) invalidate(rejected string) bool {
	if t.cred == nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok.Token == rejected {
		t.tok = azcore.AccessToken{}
	}
	return true
}
