package keyindex

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/klauspost/compress/gzip"
	"io"
	"strings"

	"github.com/sluicehq/sluice/internal/azstore"
)

// A full round that skips unchanged items must still remember that it saw
// them, or reconciliation would delete them. It writes their keys in blobs
// chained newest-first; the pipeline state names the newest blob together
// with the cursor, so a crash never leaves the two out of step. Blobs a
// crashed pass wrote but never committed are simply not in the chain.

func seenPrefix(pipeline string) string { return pipeline + "/index/round/" }

// seenName names the n-th blob (from 1) of a round's chain written under
// fence: <pipeline>/index/round/<roundStart>/<fence>-<n>.gz. The name must
// be unique for every commit: a round in which nothing changes commits again
// and again at the same head, and a name reused there would drop that
// interval's keys, which reconciliation would then delete (issue 11).
func seenName(pipeline string, roundStart, fence int64, n int) string {
	return fmt.Sprintf("%s%020d/%020d-%010d.gz", seenPrefix(pipeline), roundStart, fence, n)
}

// parseSeen reads the round and fence out of a blob name (also of the
// older <fence>-<head> names); ok is false for names it does not know.
func parseSeen(pipeline, name string) (roundStart, fence int64, ok bool) {
	rest, found := strings.CutPrefix(name, seenPrefix(pipeline))
	if !found {
		return 0, 0, false
	}
	var tail int64
	if _, err := fmt.Sscanf(rest, "%020d/%020d-%d.gz", &roundStart, &fence, &tail); err != nil {
		return 0, 0, false
	}
	return roundStart, fence, true
}

// SaveSeen writes the keys of one commit interval and returns the blob's
// name, which the caller commits in the pipeline state. prev is the chain so
// far ("" for none). fence is the caller's and n counts the blobs the caller
// wrote under it (from 1; never reused, also across a restarted round), so
// that no two commits share a name.
func SaveSeen(ctx context.Context, st *azstore.Store, pipeline string, roundStart, fence int64, n int, prev string, keys []string) (string, error) {
	var buf strings.Builder
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	bw := bufio.NewWriter(zw)
	var tmp [binary.MaxVarintLen64]byte
	for _, k := range keys {
		n := binary.PutUvarint(tmp[:], uint64(len(k)))
		bw.Write(tmp[:n])
		bw.WriteString(k)
	}
	if err := bw.Flush(); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	name := seenName(pipeline, roundStart, fence, n)
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	md := map[string]string{"nonce": hex.EncodeToString(nonce)}
	if prev != "" {
		md["prev"] = prev
	}
	if _, err := st.Create(ctx, name, []byte(buf.String()), md); err != nil {
		if !errors.Is(err, azstore.ErrConflict) {
			return "", fmt.Errorf("record unchanged keys of %s: %w", pipeline, err)
		}
		// Our own write, retried by the SDK after its answer was lost, is
		// fine. Anything else is never reused: its keys are another
		// interval's.
		rc, info, rerr := st.Read(ctx, name)
		if rerr == nil {
			rc.Close()
		}
		if rerr != nil || info.Metadata["nonce"] != md["nonce"] {
			return "", fmt.Errorf("record unchanged keys of %s: %s exists already: %w", pipeline, name, err)
		}
	}
	return name, nil
}

// LoadSeen reads the chain that starts at newest into a set.
func LoadSeen(ctx context.Context, st *azstore.Store, newest string) (map[string]struct{}, error) {
	seen := map[string]struct{}{}
	for name := newest; name != ""; {
		rc, info, err := st.Read(ctx, name)
		if errors.Is(err, azstore.ErrNotFound) {
			return nil, fmt.Errorf("read unchanged keys %s: %w: %w", name, ErrSeenLost, err)
		}
		if err != nil {
			return nil, fmt.Errorf("read unchanged keys %s: %w", name, err)
		}
		err = readKeys(rc, seen)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("read unchanged keys %s: %w", name, err)
		}
		name = info.Metadata["prev"]
	}
	return seen, nil
}

// ErrSeenLost means a blob of a chain of unchanged keys is missing or cannot
// be decoded: what the round saw can no longer be known.
var ErrSeenLost = errors.New("the record of unchanged keys is missing or corrupt")

func readKeys(r io.Reader, into map[string]struct{}) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrSeenLost, err)
	}
	br := bufio.NewReader(zr)
	for {
		n, err := binary.ReadUvarint(br)
		if err == io.EOF {
			return nil
		}
		if err != nil || n > 1<<20 {
			return fmt.Errorf("%w: corrupt key list (%v)", ErrSeenLost, err)
		}
		k := make([]byte, n)
		if _, err := io.ReadFull(br, k); err != nil {
			return fmt.Errorf("%w: %w", ErrSeenLost, err)
		}
		into[string(k)] = struct{}{}
	}
}

// DropSeen removes the key lists of the round that started at roundStart
// and that the caller completed under fence, and the leftovers of older
// rounds (best effort: leftovers are never read again).
//
// It must never touch a chain a newer reader is building. That reader has
// a higher fence (every pass bumps it), and its round started at or after
// the completed round's final head, so at or after roundStart: blobs of a
// later round, and blobs of the same round start under a higher fence, are
// kept. This holds even when the caller lost the pipeline right after its
// final commit and deletes late.
func DropSeen(ctx context.Context, st *azstore.Store, pipeline string, roundStart, fence int64) {
	var names []string
	_ = st.List(ctx, seenPrefix(pipeline), func(bi azstore.BlobInfo) error {
		r, f, ok := parseSeen(pipeline, bi.Name)
		if ok && (r < roundStart || r == roundStart && f <= fence) {
			names = append(names, bi.Name)
		}
		return nil
	})
	for _, n := range names {
		_ = st.Delete(ctx, n, "")
	}
}
