package keyindex

import (
	"bufio"
	"context"
	"encoding/binary"
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

// SaveSeen writes the keys of one commit interval and returns the blob's
// name, which the caller commits in the pipeline state. prev is the chain so
// far ("" for none).
func SaveSeen(ctx context.Context, st *azstore.Store, pipeline string, roundStart, fence, head int64, prev string, keys []string) (string, error) {
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
	name := fmt.Sprintf("%s%020d/%020d-%020d.gz", seenPrefix(pipeline), roundStart, fence, head)
	md := map[string]string{}
	if prev != "" {
		md["prev"] = prev
	}
	if _, err := st.Create(ctx, name, []byte(buf.String()), md); err != nil {
		if !errors.Is(err, azstore.ErrConflict) {
			return "", fmt.Errorf("record unchanged keys of %s: %w", pipeline, err)
		}
		// The same writer (fence) retrying the same commit: same content.
	}
	return name, nil
}

// LoadSeen reads the chain that starts at newest into a set.
func LoadSeen(ctx context.Context, st *azstore.Store, newest string) (map[string]struct{}, error) {
	seen := map[string]struct{}{}
	for name := newest; name != ""; {
		rc, info, err := st.Read(ctx, name)
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

func readKeys(r io.Reader, into map[string]struct{}) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return err
	}
	br := bufio.NewReader(zr)
	for {
		n, err := binary.ReadUvarint(br)
		if err == io.EOF {
			return nil
		}
		if err != nil || n > 1<<20 {
			return fmt.Errorf("corrupt key list")
		}
		k := make([]byte, n)
		if _, err := io.ReadFull(br, k); err != nil {
			return err
		}
		into[string(k)] = struct{}{}
	}
}

// DropSeen removes every round's key lists once a round has completed
// (best effort: leftovers are never read again).
func DropSeen(ctx context.Context, st *azstore.Store, pipeline string) {
	var names []string
	_ = st.List(ctx, seenPrefix(pipeline), func(bi azstore.BlobInfo) error { names = append(names, bi.Name); return nil })
	for _, n := range names {
		_ = st.Delete(ctx, n, "")
	}
}
