package azstore

import (
	"errors"
	"net/http"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
)

// The one set of errors callers see, whatever Azure or Azurite answered.
var (
	// ErrNotFound: the blob (or its container) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a conditional write lost — the blob exists for a
	// create-only write, or its ETag changed for an If-Match write. Azure
	// answers 409 BlobAlreadyExists or 412 ConditionNotMet depending on the
	// operation and on the emulator; both mean "someone else wrote first".
	ErrConflict = errors.New("conflict: the blob was changed by someone else")
	// ErrLeaseHeld: another process holds the lease.
	ErrLeaseHeld = errors.New("lease held by another process")
	// ErrLeaseLost: our lease expired or was taken; stop the work it guarded.
	ErrLeaseLost = errors.New("lease lost")
)

// classify maps an SDK error to the errors above, wrapping the original so
// that details stay available to logs.
func classify(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case bloberror.HasCode(err, bloberror.BlobNotFound, bloberror.ContainerNotFound, bloberror.ResourceNotFound):
		return &mapped{kind: ErrNotFound, err: err}
	case bloberror.HasCode(err, bloberror.LeaseAlreadyPresent, bloberror.LeaseIsBreakingAndCannotBeAcquired):
		return &mapped{kind: ErrLeaseHeld, err: err}
	case bloberror.HasCode(err, bloberror.LeaseLost, bloberror.LeaseIDMismatchWithLeaseOperation,
		bloberror.LeaseNotPresentWithLeaseOperation, bloberror.LeaseIsBrokenAndCannotBeRenewed,
		bloberror.LeaseIDMismatchWithBlobOperation, bloberror.LeaseNotPresentWithBlobOperation):
		return &mapped{kind: ErrLeaseLost, err: err}
	case bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet,
		bloberror.ResourceAlreadyExists, bloberror.TargetConditionNotMet):
		return &mapped{kind: ErrConflict, err: err}
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		switch re.StatusCode {
		case http.StatusNotFound:
			return &mapped{kind: ErrNotFound, err: err}
		case http.StatusPreconditionFailed:
			// A conditional read of a missing blob answers 412 on Azurite
			// where Azure answers 404; callers that read conditionally
			// check existence separately, so 412 here is a lost race.
			return &mapped{kind: ErrConflict, err: err}
		case http.StatusConflict:
			return &mapped{kind: ErrConflict, err: err}
		}
	}
	return err
}

type mapped struct {
	kind error
	err  error
}

func (m *mapped) Error() string {
	// The SDK's message is a multi-line dump; keep the first line.
	msg := m.err.Error()
	var re *azcore.ResponseError
	if errors.As(m.err, &re) && re.ErrorCode != "" {
		msg = re.ErrorCode
	}
	return m.kind.Error() + " (" + msg + ")"
}

func (m *mapped) Unwrap() []error { return []error{m.kind, m.err} }
