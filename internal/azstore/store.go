package azstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/v2"
)

// ETag identifies one version of a blob. The empty ETag in a write means
// "create only: fail if the blob exists".
type ETag string

// Store is one container and the account's queues.
type Store struct {
	container *container.Client
	queues    *azqueue.ServiceClient
	name      string
	log       *slog.Logger
}

// Options tune Open.
type Options struct {
	// Logger receives debug lines; nil discards them.
	Logger *slog.Logger
	// HTTPClient overrides the transport (tests inject faults with it).
	HTTPClient policy.Transporter
}

// Open connects to the container (creating it when missing) and the queues.
func Open(ctx context.Context, s Settings, containerName string, opts Options) (*Store, error) {
	if containerName == "" {
		containerName = "sluice"
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	copts := azcore.ClientOptions{Transport: opts.HTTPClient}
	// The SDK's defaults retry for minutes; the engine has its own budget and
	// retries, so keep storage calls short and let the caller decide.
	copts.Retry = policy.RetryOptions{MaxRetries: 3, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 2 * time.Second, TryTimeout: 60 * time.Second}
	bopts := &azblob.ClientOptions{ClientOptions: copts}
	qopts := &azqueue.ClientOptions{ClientOptions: copts}

	st := &Store{name: containerName, log: logger}
	if s.ConnectionString != "" {
		svc, err := azblob.NewClientFromConnectionString(s.ConnectionString, bopts)
		if err != nil {
			return nil, fmt.Errorf("open blob service (%s): %w", s, err)
		}
		st.container = svc.ServiceClient().NewContainerClient(containerName)
		st.queues, err = azqueue.NewServiceClientFromConnectionString(s.ConnectionString, qopts)
		if err != nil {
			return nil, fmt.Errorf("open queue service (%s): %w", s, err)
		}
	} else {
		cred, err := s.credential()
		if err != nil {
			return nil, err
		}
		svc, err := azblob.NewClient(s.BlobURL, cred, bopts)
		if err != nil {
			return nil, fmt.Errorf("open blob service (%s): %w", s, err)
		}
		st.container = svc.ServiceClient().NewContainerClient(containerName)
		st.queues, err = azqueue.NewServiceClient(s.QueueURL, cred, qopts)
		if err != nil {
			return nil, fmt.Errorf("open queue service (%s): %w", s, err)
		}
	}
	if _, err := st.container.Create(ctx, nil); err != nil && !isCode(err, http.StatusConflict) {
		return nil, fmt.Errorf("create container %q (%s): %w", containerName, s, err)
	}
	return st, nil
}

func isCode(err error, status int) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == status
}

// Container names the container the store works in.
func (s *Store) Container() string { return s.name }

// BlobInfo describes one blob from a listing or a read.
type BlobInfo struct {
	Name     string
	ETag     ETag
	Size     int64
	Metadata map[string]string
}

// ReadDoc reads a JSON document into v and returns its ETag.
// A missing document is ErrNotFound.
func (s *Store) ReadDoc(ctx context.Context, name string, v any) (ETag, error) {
	rc, info, err := s.Read(ctx, name)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<20))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return "", fmt.Errorf("decode %s: %w", name, err)
	}
	return info.ETag, nil
}

// WriteDoc writes v as JSON. With match == "" the write only creates (it
// fails with ErrConflict if the document exists); otherwise it replaces the
// version match and fails with ErrConflict if someone else wrote since.
func (s *Store) WriteDoc(ctx context.Context, name string, v any, match ETag) (ETag, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", name, err)
	}
	return s.put(ctx, name, data, nil, match, "application/json")
}

// Create writes a blob that must not exist yet (If-None-Match: *).
func (s *Store) Create(ctx context.Context, name string, data []byte, metadata map[string]string) (ETag, error) {
	return s.put(ctx, name, data, metadata, "", "application/octet-stream")
}

func (s *Store) put(ctx context.Context, name string, data []byte, metadata map[string]string, match ETag, contentType string) (ETag, error) {
	cond := &blob.ModifiedAccessConditions{}
	if match == "" {
		cond.IfNoneMatch = to.Ptr(azcore.ETagAny)
	} else {
		cond.IfMatch = to.Ptr(azcore.ETag(match))
	}
	md := make(map[string]*string, len(metadata))
	for k, v := range metadata {
		md[k] = to.Ptr(v)
	}
	resp, err := s.container.NewBlockBlobClient(name).Upload(ctx, nopSeekCloser{bytes.NewReader(data)}, &blockblob.UploadOptions{
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: cond},
		Metadata:         md,
		HTTPHeaders:      &blob.HTTPHeaders{BlobContentType: to.Ptr(contentType)},
	})
	if err != nil {
		return "", fmt.Errorf("write %s/%s: %w", s.name, name, classify(err))
	}
	return ETag(*resp.ETag), nil
}

type nopSeekCloser struct{ *bytes.Reader }

func (nopSeekCloser) Close() error { return nil }

// Read opens a blob for streaming. The reader resumes by itself after a
// broken connection (it re-requests the rest of this same version).
func (s *Store) Read(ctx context.Context, name string) (io.ReadCloser, BlobInfo, error) {
	resp, err := s.container.NewBlobClient(name).DownloadStream(ctx, nil)
	if err != nil {
		return nil, BlobInfo{}, fmt.Errorf("read %s/%s: %w", s.name, name, classify(err))
	}
	info := BlobInfo{Name: name, ETag: ETag(deref(resp.ETag)), Size: deref(resp.ContentLength), Metadata: flatten(resp.Metadata)}
	body := resp.NewRetryReader(ctx, &blob.RetryReaderOptions{MaxRetries: 5})
	return body, info, nil
}

// Delete removes a blob; with match set, only that version. A missing blob
// is ErrNotFound.
func (s *Store) Delete(ctx context.Context, name string, match ETag) error {
	opts := &blob.DeleteOptions{}
	if match != "" {
		opts.AccessConditions = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: to.Ptr(azcore.ETag(match))}}
	}
	if _, err := s.container.NewBlobClient(name).Delete(ctx, opts); err != nil {
		return fmt.Errorf("delete %s/%s: %w", s.name, name, classify(err))
	}
	return nil
}

// List returns the blobs whose names start with prefix, in name order, with
// their metadata. fn is called for each; returning an error stops the listing.
func (s *Store) List(ctx context.Context, prefix string, fn func(BlobInfo) error) error {
	pager := s.container.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Prefix:  to.Ptr(prefix),
		Include: container.ListBlobsInclude{Metadata: true},
	})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list %s/%s: %w", s.name, prefix, classify(err))
		}
		for _, item := range page.Segment.BlobItems {
			info := BlobInfo{Name: deref(item.Name), Metadata: flatten(item.Metadata)}
			if item.Properties != nil {
				info.ETag = ETag(deref(item.Properties.ETag))
				info.Size = deref(item.Properties.ContentLength)
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func flatten(md map[string]*string) map[string]string {
	out := make(map[string]string, len(md))
	for k, v := range md {
		// The service answers metadata keys in the case it stored them,
		// but Azurite and Azure differ; lower-case for one spelling.
		out[lower(k)] = deref(v)
	}
	return out
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// DeleteContainer deletes the store's container and everything in it (tests
// clean up with it; sluice itself never calls it).
func (s *Store) DeleteContainer(ctx context.Context) error {
	if _, err := s.container.Delete(ctx, nil); err != nil {
		return fmt.Errorf("delete container %s: %w", s.name, classify(err))
	}
	return nil
}
